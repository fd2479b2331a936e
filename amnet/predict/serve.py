"""`amnet serve`: a local web page (Gradio) that scores the images dropped on it.

For each image: the score, the per-step scores and the paper's Fig. 2 attention figure
(amnet.predict.viz); for all of them a table sorted by score (a click on a column header sorts by it)
and a CSV with `amnet predict`'s columns (amnet.predict.report); at the top, what the model is -- its
checkpoints, the backbone and the data it was trained on -- with a warning when that is the
synthetic demo's (`ModelCard`).

Scoring goes through `amnet predict`'s own batch loop (amnet.predict.scoring.predict_items), so a score
on the page equals `amnet predict`'s for the same images in the same order (with the default
`auto` precision a bf16 trunk's features depend a little on what shares the batch).

Offline by construction: Gradio's analytics, its version check and the Hugging Face telemetry are
switched off before gradio is imported (`OFFLINE_ENV`), there is no share link and no server-side
rendering (node), and the default theme's fonts ship inside gradio (no Google Fonts); the
browser test (tests/test_serve_browser.py) checks that the page fetches nothing from any other
host and that the server makes no outgoing request.

gradio is imported only inside the functions that need it (`pip install "amnet[serve]"`).
"""
from __future__ import annotations

import csv
import html
import os
import re
import shutil
import signal
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from amnet.core.atomic import atomic_open
from amnet.core.errors import AmnetError
from amnet.predict.predictor import Predictor
from amnet.predict.report import csv_header, csv_row, figure_path
from amnet.predict.scoring import InputItem, ItemResult, predict_items

# Set before gradio is imported (it reads them then): no analytics, no "new version" request to
# api.gradio.app, no Hugging Face Hub telemetry.
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "True",
               "DO_NOT_TRACK": "1"}

DEFAULT_PORT = 7860
TITLE = "amnet: image memorability (AMNet)"
# the split files of a data set prepared by `amnet` live in data/<data set>/splits/
_SPLITS_DIR = re.compile(r"(?:^|/)data/([^/]+)/splits/")


# ---- what the model is -------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelCard:
    """What the page says about the model: one line each for the model, its backbone and its
    training data, and `demo_reasons` (Predictor.demo_reasons; non-empty: it is the synthetic
    demo's, not a memorability model for photos, and the page shows `warning()`)."""
    model: str
    backbone: str
    data: str
    demo_reasons: tuple[str, ...] = ()

    @property
    def synthetic(self) -> bool:
        return bool(self.demo_reasons)

    def warning(self) -> str:
        """One paragraph (plain text) when the model is the demo's, else ""."""
        if not self.demo_reasons:
            return ""
        return ("Demo model, not a memorability model for photos: trained "
                + " ".join(self.demo_reasons) + ", its scores mean nothing for real photos "
                "(they say how much a picture looks like the demo's synthetic striped disks). "
                "For real memorability scores serve the published model: amnet serve --model "
                "lamem-resnet50 (see amnet models list).")

    def html(self) -> str:
        """The three lines, escaped (paths may hold any character)."""
        rows = (("Model", self.model), ("Backbone", self.backbone), ("Trained on", self.data))
        return "<p>" + "<br>".join(f"<b>{k}:</b> {html.escape(v)}" for k, v in rows) + "</p>"

    def warning_html(self) -> str:
        """The warning as a visible box (inline style: no CSS file to load), or ""."""
        if not self.demo_reasons:
            return ""
        return ('<div id="amnet-warning" role="alert" style="border: 2px solid #b45309; '
                'background: #fef3c7; color: #78350f; padding: 0.6em 0.9em; border-radius: 6px; '
                f'font-size: 1.05em">&#9888; {html.escape(self.warning())}</div>')


def _data_set(meta: dict[str, Any]) -> tuple[str, str]:
    """(data set name, where that comes from) for one checkpoint; name "" when not recorded."""
    tc = meta.get("train_config") or {}
    if tc.get("dataset"):  # imported published weights: guessed from the release's file name
        src = tc.get("imported_from") or ""
        return str(tc["dataset"]), f"imported from {Path(src).name}" if src else ""
    train = ((tc.get("splits") or {}).get("train") or {}).get("path") or ""
    m = _SPLITS_DIR.search(str(train).replace(os.sep, "/"))
    if m:
        return m.group(1), f"train list {train}"
    if tc.get("cache"):
        return Path(str(tc["cache"])).stem, f"feature cache {tc['cache']}"
    return "", ""


def describe_model(predictor: Predictor, name: str | None = None) -> ModelCard:
    """The `ModelCard` of a Predictor's checkpoints (their provenance and training record).
    `name`: the published model's name when it came from `--model`."""
    paths = list(predictor.checkpoints)
    metas = predictor.metas
    heads = f"{len(paths)} heads averaged" if len(paths) > 1 else "1 head"
    shown = ", ".join(str(p) for p in paths[:5]) + (", ..." if len(paths) > 5 else "")
    model = f"{name} ({heads})" if name else f"{heads}: {shown}"
    rhos = [(m.get("metrics") or {}).get("rho") for m in metas]
    if all(isinstance(r, (int, float)) for r in rhos):
        model += (f"; test Spearman rho {sum(rhos) / len(rhos):.3f} on its own data set's test "
                  "split (mean over heads)")

    prov = predictor.provenance
    weights = prov.weights_id or "unknown weights"
    sha = f" (sha256 {prov.weights_sha256[:12]})" if prov.weights_sha256 else ""
    backbone = (f"{prov.arch or 'unknown'} {prov.layer or 'layer3'}, weights {weights}{sha}, "
                f"input {prov.image_size} x {prov.image_size}")

    found = [_data_set(m) for m in metas]
    names = sorted({n for n, _ in found if n})
    data = ", ".join(names) if names else "not recorded in the checkpoints"
    wheres = list(dict.fromkeys(w for _, w in found if w))  # unique, in checkpoint order
    if wheres:
        data += " (" + "; ".join(wheres[:3]) + ("; ..." if len(wheres) > 3 else "") + ")"

    # the same judgement as `amnet predict`'s warning (amnet.predict.predictor)
    return ModelCard(model, backbone, data, tuple(predictor.demo_reasons))


# ---- scoring the dropped images ----------------------------------------------------------------

@dataclass
class Scored:
    """What one drop of images gives: `results` in score order (failed ones last), the table's
    `header` and `rows` (the CSV's columns and numbers, path = the file's name, same order),
    the CSV written (input order, as `amnet predict` writes it) and each result's attention
    figure (PNG; None for a failed image)."""
    results: list[ItemResult]
    header: list[str]
    rows: list[list[Any]]
    csv: Path | None
    figures: list[Path | None] = field(default_factory=list)


def _number(text: str) -> float | None:
    return float(text) if text else None


def score_images(predictor: Predictor, paths: Sequence[str | Path], out_dir: str | Path, *,
                 batch_size: int = 32) -> Scored:
    """Score image files (in the order given, in batches as `amnet predict` does), write the CSV
    (`scores.csv`, `amnet predict`'s columns) and one attention figure per scored image into
    `out_dir`. A file that is not a decodable image gets a row with the reason, as in predict."""
    from amnet.predict import viz

    out_dir = Path(out_dir)
    header = csv_header(predictor, has_gt=False)
    if not paths:
        return Scored([], header, [], None)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = [InputItem(Path(p).name, Path(p)) for p in paths]
    results = list(predict_items(predictor, items, batch_size=batch_size, keep_images=True,
                                 progress=False))
    csv_path = out_dir / "scores.csv"
    with atomic_open(csv_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(csv_row(predictor, r, r.item.name, has_gt=False) for r in results)
    # the page shows them from most to least memorable
    ranked = sorted(results, key=lambda r: (bool(r.error), -(r.score or 0.0)))
    figures: list[Path | None] = []
    used: set[str] = set()
    for r in ranked:
        if r.error or r.image is None:
            figures.append(None)
            continue
        png = figure_path(out_dir / "figures", r.item.name, used)
        figures.append(viz.save_attention_figure(png, r.image, r.attention, r.step_scores,
                                                 r.score, title=r.item.name))
    # numbers as numbers, so that the table sorts them as such (path and error stay text)
    rows = [[row[0]] + [_number(v) for v in row[1:-1]] + [row[-1]]
            for row in (csv_row(predictor, r, r.item.name, has_gt=False) for r in ranked)]
    return Scored(ranked, header, rows, csv_path, figures)


def file_url(path: str | Path) -> str:
    """The page-relative URL gradio serves a file under (it must be in launch's allowed_paths)."""
    return "gradio_api/file=" + quote(str(Path(path).resolve()))


def results_html(scored: Scored) -> str:
    """The list on the page, most memorable first: per image its score (6 decimals, as in the
    CSV), its step scores and its attention figure."""
    if not scored.results:
        return ""
    lines = []
    for r, fig in zip(scored.results, scored.figures):
        name = html.escape(r.item.name)
        if r.error:
            lines.append(f'<li class="amnet-failed" data-name="{name}"><b>{name}</b>: not scored '
                         f'({html.escape(r.error)})</li>')
            continue
        steps = " + ".join(f"{float(v):.3f}" for v in r.step_scores)
        img = (f'<br><img class="amnet-figure" src="{html.escape(file_url(fig))}" '
               f'alt="attention figure of {name}" style="max-width: 100%; height: auto">'
               if fig is not None else "")
        lines.append(f'<li class="amnet-score" data-name="{name}" data-score="{r.score:.6f}">'
                     f'<b>{name}</b>: score <span class="amnet-value">{r.score:.6f}</span>'
                     f' &nbsp;(step scores {steps}){img}</li>')
    return '<ol id="amnet-scores">' + "".join(lines) + "</ol>"


# ---- the page ----------------------------------------------------------------------------------

def import_gradio():
    """gradio, imported with everything that would reach the internet switched off first."""
    os.environ.update(OFFLINE_ENV)
    try:
        import gradio
    except ImportError as e:
        raise AmnetError("amnet serve needs gradio: pip install \"amnet[serve]\" "
                         f"({type(e).__name__}: {e})") from e
    return gradio


_INTRO = """# amnet: how memorable is an image?
Drop one or more images. Each gets a memorability score (AMNet, Fajtl et al. CVPR 2018; LaMem's
scale runs from 0 to 1), its per-step scores (the LSTM looks {steps} times; the step scores add
up to the score) and the paper's Fig. 2: where each step looked. Scoring runs on this machine;
nothing is sent elsewhere."""


def build_app(predictor: Predictor, card: ModelCard, *, batch_size: int = 32,
              workdir: str | Path | None = None):
    """The Gradio Blocks page for `predictor` (not launched). Outputs of each drop go to a fresh
    folder under `workdir` (default: a new temporary folder, `app.amnet_workdir`)."""
    gr = import_gradio()
    work = (Path(workdir) if workdir is not None
            else Path(tempfile.mkdtemp(prefix="amnet-serve-"))).resolve()
    header = csv_header(predictor, has_gt=False)
    datatype = ["str"] + ["number"] * (len(header) - 2) + ["str"]

    def on_files(files: list[str] | None):
        import pandas as pd

        if not files:
            return "", pd.DataFrame(columns=header), gr.update(value=None, visible=False)
        scored = score_images(predictor, files, work / uuid.uuid4().hex, batch_size=batch_size)
        return (results_html(scored), pd.DataFrame(scored.rows, columns=scored.header),
                gr.update(value=str(scored.csv), visible=True))

    # delete_cache: gradio's copies of uploads and outputs older than a day, checked hourly
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 86400)) as app:
        gr.Markdown(_INTRO.format(steps=predictor.steps))
        gr.HTML(card.warning_html(), elem_id="amnet-warning-box", visible=card.synthetic)
        gr.HTML(card.html(), elem_id="amnet-model-card")
        files = gr.File(file_count="multiple", file_types=["image"], type="filepath",
                        label="Images (drop one or many)", elem_id="amnet-files")
        table = gr.Dataframe(headers=header, datatype=datatype, interactive=False,
                             label="Scores, most memorable first (click a column to sort)",
                             elem_id="amnet-table")
        download = gr.DownloadButton("Download CSV (amnet predict's columns)", visible=False,
                                     elem_id="amnet-csv")
        scores = gr.HTML("", elem_id="amnet-results")
        # gradio's queue runs one scoring at a time (concurrency 1): one model, one trunk
        files.change(on_files, inputs=files, outputs=[scores, table, download])
    app.amnet_workdir = work
    return app


def serve(predictor: Predictor, card: ModelCard, *, host: str = "127.0.0.1",
          port: int = DEFAULT_PORT, batch_size: int = 32) -> None:
    """Build the page and serve it at http://host:port until interrupted (Ctrl-C); the figures
    and CSVs it wrote are removed afterwards."""
    app = build_app(predictor, card, batch_size=batch_size)
    try:
        try:
            _, url, _ = launch(app, host=host, port=port)
        except OSError as e:
            why = str(e).split(". ")[0]  # gradio's first sentence; the rest is about launch()
            raise AmnetError(f"cannot serve on {host}:{port} ({why}); pass another --port") from e
        print(f"amnet serve: {url} (Ctrl-C to stop)", flush=True)
        # a plain `kill` (SIGTERM) stops it as Ctrl-C does: server closed, folder removed
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)
        app.block_thread()  # until Ctrl-C; it then closes the server
    except KeyboardInterrupt:  # Ctrl-C before block_thread took over
        app.close()
    finally:
        shutil.rmtree(app.amnet_workdir, ignore_errors=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def launch(app, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT):
    """Start serving a `build_app` page in the background -> gradio's (app, local URL, share
    URL). Offline settings: no share link, no node server-side rendering, no monitoring; the
    page may fetch the files its figures are in (allowed_paths)."""
    return app.launch(server_name=host, server_port=port, share=False, ssr_mode=False,
                      inbrowser=False, prevent_thread_lock=True, quiet=True, show_error=True,
                      enable_monitoring=False, footer_links=["api"], max_file_size="100mb",
                      allowed_paths=[str(app.amnet_workdir)])
