"""amnet.predict.serve without a browser: the model card (provenance, the demo warning), scoring dropped
files into `amnet predict`'s CSV and the page's list, the Gradio page's event function,
--model through amnet.predict.hub, and the CLI's one-line errors. The page in a real browser:
tests/test_serve_browser.py."""
from __future__ import annotations

import csv
import html
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from amnet.cli import main
from amnet.core.errors import AmnetError
from conftest import BOTH_MODELS, DEMO_TRAIN_CONFIG, NO_MODEL, save_tiny_head, write_image

pytest.importorskip("gradio", reason="gradio is not installed (pip install 'amnet[serve]')")

SIZE = 64  # 4 x 4 grid: fast on CPU


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    heads = [save_tiny_head(root / "ck" / f"{k}.pt", seed=k, size=SIZE,
                        train_config={**DEMO_TRAIN_CONFIG, "splits": {"train": {
                            "path": f"data/demo/splits/train_{k}.txt"}}},
                        metrics={"rho": 0.8 + 0.1 * k}) for k in (1, 2)]
    imgs = root / "images"
    files = [write_image(imgs / "a.jpg", seed=1, w=80, h=60),
             write_image(imgs / "b <x>.png", "rgba", seed=2),
             write_image(imgs / "bad.jpg", "truncated"),
             write_image(imgs / "c.jpg", seed=3, w=50, h=90)]
    return {"root": root, "heads": heads, "files": files}


@pytest.fixture(scope="module")
def predictor(env):
    from amnet.predict.predictor import Predictor
    return Predictor.from_checkpoint(env["heads"], device="cpu")


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


# ---- the model card ------------------------------------------------------------------------------

def test_model_card_of_the_demo_warns(env, predictor):
    from amnet.predict.serve import describe_model

    card = describe_model(predictor)
    assert card.synthetic
    paths = ", ".join(str(p) for p in env["heads"])
    assert card.model == (f"2 heads averaged: {paths}; test Spearman rho 0.950 on its own data "
                          "set's test split (mean over heads)")
    sha = predictor.provenance.weights_sha256[:12]
    assert card.backbone == f"resnet50 layer3, weights random:0 (sha256 {sha}), input 64 x 64"
    assert card.data == ("demo (train list data/demo/splits/train_1.txt; "
                         "train list data/demo/splits/train_2.txt)")
    # amnet predict's judgement (Predictor.demo_reasons), over both checkpoints
    assert card.demo_reasons == ("on the synthetic demo data set",
                                 "with a random-weight backbone (random:0)")
    assert card.warning().startswith(
        "Demo model, not a memorability model for photos: trained on the synthetic demo data set "
        "with a random-weight backbone (random:0), its scores mean nothing for real photos")
    assert "amnet serve --model lamem-resnet50" in card.warning()
    box = card.warning_html()
    assert box.startswith('<div id="amnet-warning" role="alert"') and "Demo model" in box
    assert describe_model(predictor, "my-model").model.startswith("my-model (2 heads averaged)")
    assert card.html() == (f"<p><b>Model:</b> {html.escape(card.model)}<br><b>Backbone:</b> "
                           f"{card.backbone}<br><b>Trained on:</b> {card.data}</p>")
    assert "data set&#x27;s test split" in card.html()


def test_model_card_of_imported_weights_has_no_warning(env, tmp_path):
    """A published model's head (import-weights records the data set it guessed from the file
    name) on an ImageNet trunk: no warning. The trunk is never loaded (backbone=False)."""
    from amnet.head.checkpoint import load_checkpoint, save_checkpoint
    from amnet.predict.predictor import Predictor
    from amnet.predict.serve import describe_model

    _, ckpt = load_checkpoint(env["heads"][0])
    ckpt["backbone"] = {**ckpt["backbone"], "weights_id": "imagenet", "weights_sha256": None}
    ckpt["train_config"] = {"imported_from": "/x/lamem_ResNet50FC_lstm3_train_1.pkl",
                            "dataset": "lamem", "split": 1}
    ckpt["metrics"] = {}
    path = save_checkpoint(ckpt, tmp_path / "head.pt")
    card = describe_model(Predictor.from_checkpoint([path], "cpu", backbone=False))
    assert not card.synthetic and card.warning() == "" and card.warning_html() == ""
    assert card.data == "lamem (imported from lamem_ResNet50FC_lstm3_train_1.pkl)"
    assert card.backbone == "resnet50 layer3, weights imagenet, input 64 x 64"
    assert card.model == f"1 head: {path}"

    # a head whose training record says nothing about its data: said so, no guess
    ckpt["train_config"] = {}
    bare = save_checkpoint(ckpt, tmp_path / "bare.pt")
    card = describe_model(Predictor.from_checkpoint([bare], "cpu", backbone=False))
    assert card.data == "not recorded in the checkpoints" and not card.synthetic


# ---- scoring dropped files -----------------------------------------------------------------------

def test_score_images_matches_amnet_predict(env, predictor, tmp_path):
    """Same files, same order, same defaults: the CSV is `amnet predict`'s but for the path
    column (the file's name: the page never shows where gradio keeps uploads)."""
    from amnet.predict.serve import score_images

    files = env["files"]
    scored = score_images(predictor, files, tmp_path / "out")
    out = tmp_path / "predict.csv"
    ck_args = [a for h in env["heads"] for a in ("--checkpoint", str(h))]
    res = CliRunner().invoke(main, ["predict", *ck_args, *map(str, files), "--out", str(out)])
    assert res.exit_code == 0, res.output
    want = _read_csv(out)
    got = _read_csv(scored.csv)
    assert got[0] == want[0] == ["path", "score", "step_1", "step_2", "step_3", "score_1",
                                 "score_2", "error"]
    assert [r[0] for r in got[1:]] == [f.name for f in files]
    assert [r[1:] for r in got[1:]] == [r[1:] for r in want[1:]]
    assert "bad.jpg" in got[3][0] and got[3][1] == "" and got[3][-1]  # a reason, no score

    # the page's order: most memorable first, the failed image last
    names = [r.item.name for r in scored.results]
    assert names[-1] == "bad.jpg"
    scores = [r.score for r in scored.results[:-1]]
    assert scores == sorted(scores, reverse=True) and np.ptp(scores) > 1e-3
    assert scored.header == want[0]
    by_name = {r[0]: r for r in got[1:]}
    for row in scored.rows[:-1]:  # numbers as numbers (the table sorts them), CSV's values
        assert isinstance(row[1], float)
        assert [f"{v:.6f}" for v in row[1:-1]] == by_name[row[0]][1:-1]
    assert scored.rows[-1][0] == "bad.jpg" and scored.rows[-1][1] is None
    # one Fig. 2 per scored image (panels + colour bar), none for the failed one
    assert scored.figures[-1] is None
    for fig in scored.figures[:-1]:
        with Image.open(fig) as im:
            assert im.format == "PNG" and im.size[0] > 2.5 * im.size[1]
    assert len({f.name for f in scored.figures[:-1]}) == 3


def test_results_html_lists_scores_and_figures(env, predictor, tmp_path):
    from amnet.predict.serve import file_url, results_html, score_images

    scored = score_images(predictor, env["files"][:3], tmp_path / "out")
    page = results_html(scored)
    assert page.startswith('<ol id="amnet-scores">')
    a = next(r for r in scored.results if r.item.name == "a.jpg")
    steps = " + ".join(f"{v:.3f}" for v in a.step_scores)
    assert (f'<li class="amnet-score" data-name="a.jpg" data-score="{a.score:.6f}"><b>a.jpg</b>: '
            f'score <span class="amnet-value">{a.score:.6f}</span> &nbsp;(step scores {steps})'
            in page)
    assert "b &lt;x&gt;.png" in page and "b <x>.png" not in page  # names are escaped
    assert page.count('class="amnet-figure"') == 2
    assert file_url(scored.figures[0]) in page.replace("&amp;", "&")
    assert file_url("/tmp/a b/c.png") == "gradio_api/file=/tmp/a%20b/c.png"
    assert '<li class="amnet-failed" data-name="bad.jpg"><b>bad.jpg</b>: not scored (' in page
    assert results_html(score_images(predictor, [], tmp_path / "none")) == ""


# ---- the page ------------------------------------------------------------------------------------

def test_build_app_is_offline_and_its_event_scores(env, predictor, tmp_path):
    from amnet.predict.serve import OFFLINE_ENV, build_app, describe_model

    app = build_app(predictor, describe_model(predictor), workdir=tmp_path / "work")
    for key, value in OFFLINE_ENV.items():
        assert os.environ[key] == value
    assert app.analytics_enabled is False
    fns = [f for f in app.fns.values() if f.name == "on_files"]
    assert len(fns) == 1
    page, table, download = fns[0].fn([str(f) for f in env["files"][:2]])
    assert page.count('class="amnet-score"') == 2
    assert list(table.columns) == ["path", "score", "step_1", "step_2", "step_3", "score_1",
                                   "score_2", "error"]
    assert table["score"].is_monotonic_decreasing and len(table) == 2
    assert download["visible"] is True
    csv_file = Path(download["value"])
    assert csv_file.is_file() and csv_file.is_relative_to((tmp_path / "work").resolve())
    page, table, download = fns[0].fn([])  # all files removed: the page is cleared
    assert page == "" and len(table) == 0 and download["visible"] is False


def test_import_gradio_missing_is_one_line(monkeypatch):
    from amnet.predict import serve

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(AmnetError,
                       match=r'^amnet serve needs gradio: pip install "amnet\[serve\]"'):
        serve.import_gradio()


# ---- the CLI -------------------------------------------------------------------------------------

def test_cli_needs_exactly_one_model_source(env):
    res = CliRunner().invoke(main, ["serve"])
    assert res.exit_code == 2 and res.output.endswith(NO_MODEL)
    res = CliRunner().invoke(main, ["serve", "--model", "x", "--checkpoint", str(env["heads"][0])])
    assert res.exit_code == 2 and res.output.endswith(BOTH_MODELS)


def test_cli_model_comes_from_the_hub(monkeypatch, env):
    """--model NAME: the published model's checkpoints through amnet.predict.hub (here two demo heads
    standing in for a downloaded release), served under its name."""
    import amnet.predict.hub
    import amnet.predict.serve

    asked, served = [], []
    monkeypatch.setattr(amnet.predict.hub, "checkpoints_for",
                        lambda name: asked.append(name) or list(env["heads"]))
    monkeypatch.setattr(amnet.predict.serve, "serve", lambda predictor, card, **kw: served.append(
        (predictor, card, kw)))
    res = CliRunner().invoke(main, ["serve", "--model", "lamem-resnet50", "--port", "7999",
                                    "--device", "cpu", "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    assert asked == ["lamem-resnet50"]
    predictor, card, kw = served[0]
    assert predictor.checkpoints == list(env["heads"])
    assert card.model.startswith("lamem-resnet50 (2 heads averaged)")
    assert kw == {"host": "127.0.0.1", "port": 7999, "batch_size": 32}
    assert res.output.startswith("warning: Demo model")  # these stand-ins are the demo's


def test_cli_unknown_model_is_one_line():
    res = CliRunner().invoke(main, ["serve", "--model", "no-such-model"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert res.output.startswith("Error: ") and "no-such-model" in res.output


def test_cli_port_in_use_is_one_line(env):
    """The demo warning goes to the terminal too; a taken port is one line naming it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = CliRunner().invoke(main, ["serve", "--checkpoint", str(env["heads"][0]),
                                        "--port", str(port), "--device", "cpu"])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("warning: Demo model, not a memorability model for photos")
    assert lines[-1].startswith(f"Error: cannot serve on 127.0.0.1:{port} (")
    assert lines[-1].endswith("; pass another --port")
