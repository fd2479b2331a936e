"""Images -> memorability scores (+ attention maps), end to end: the trunk + one or more heads.

- predictor: `Predictor` (heads + the backbone they were trained on, loaded from checkpoints)
  and its `Prediction`; head_provenance: which backbone the checkpoints need, and its checks;
- scoring: what to score (`collect_inputs` -> `InputItem`s) and the batch loops over images
  (`predict_items`) or a feature cache (`predict_cached`);
- report: `amnet predict`'s CSV, attention figures (viz) and contact sheet (`write_predictions`);
- export (one ONNX / TorchScript graph), serve (the web demo), hub (the published models by
  name), released_weights (importing the authors' weights), memorability_loss (the score as a
  differentiable loss).

    p = Predictor.from_checkpoint(["models/1/head.pt", "models/2/head.pt"])
    r = p.predict("photo.jpg")        # r.score: float, r.step_scores: [T], r.attention: [T, g, g]
"""
