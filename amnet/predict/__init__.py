"""Images -> memorability scores (+ attention maps), end to end: backbone + one or more heads.

This module gathers the public names of the three that do it:

- amnet.predict.predictor: `Predictor` (heads + the backbone they were trained on, loaded from
  checkpoints and checked against their provenance) and its `Prediction`;
- amnet.predict.scoring: what to score (`collect_inputs` -> `InputItem`s) and the batch loops over
  images (`predict_items`) or a feature cache (`predict_cached`);
- amnet.predict.report: `amnet predict`'s CSV, attention figures and contact sheet (`write_predictions`).

    p = Predictor.from_checkpoint(["models/1/head.pt", "models/2/head.pt"])
    r = p.predict("photo.jpg")        # r.score: float, r.step_scores: [T], r.attention: [T, g, g]
"""
from amnet.predict.predictor import Prediction, Predictor, check_cache_provenance
from amnet.predict.report import figure_path, nothing_scored, summary_line, write_predictions
from amnet.predict.scoring import (LIST_EXTS, InputItem, ItemResult, collect_inputs, list_root,
                           predict_cached, predict_items)

__all__ = ["LIST_EXTS", "InputItem", "ItemResult", "Prediction", "Predictor",
           "check_cache_provenance", "collect_inputs", "figure_path", "list_root",
           "nothing_scored", "predict_cached", "predict_items", "summary_line",
           "write_predictions"]
