"""amnet.predict.hub + `amnet models` + `amnet predict --model`: the published models by name.

A loopback HTTP server (127.0.0.1, conftest.RangeServer) serves a zip in the release's layout
(`lamem_ResNet50FC_lstm3_train_<i>/weights_<e>.pkl`, the whole ResNet50 with per-split drifted BN
statistics + a narrow head, random values), reached through `AMNET_HUB_MIRROR`: gdown fetches it
as it would any direct URL. What these tests cannot reach is Google Drive itself (its confirmation
page for large files, quotas): that part is gdown's, and only its offline failure is tested here.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import BOTH_MODELS, NO_MODEL, RangeServer, release_state_dict, write_image

from amnet.cli import main
from amnet.core.errors import WeightsError
from amnet.predict import hub

NAME = "lamem-resnet50"
EXP = "lamem_ResNet50FC_lstm3"
EPOCHS = {1: 35, 2: 40}
HEAD = dict(width=32, hidden=32, regressor=16)


def _error_line(output: str) -> str:
    """The one `Error: ...` line of a failed command; no traceback anywhere."""
    assert "Traceback" not in output
    lines = [ln for ln in output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture(scope="module")
def release():
    """Two splits of one release: the same frozen conv weights (trunk_seed), BN running stats
    drifted differently per split (the original's train-mode BN, spec 1), gamma/beta frozen."""
    sds = {s: release_state_dict("resnet50", trunk_seed=0, drift_seed=s, head_seed=10 + s,
                                 affine=False, **HEAD) for s in EPOCHS}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for s, epoch in EPOCHS.items():
            pkl = io.BytesIO()
            torch.save({"model": sds[s]}, pkl, _use_new_zipfile_serialization=False)  # as 2018's
            zf.writestr(f"{EXP}_train_{s}/weights_{epoch}.pkl", pkl.getvalue())
        zf.writestr(f"{EXP}_train_1/train_log_0.csv", "kind,epoch,iter,loss,rho,lr,mse\n")
    return {"sds": sds, "zip": buf.getvalue()}


@pytest.fixture(scope="module")
def server(release):
    with RangeServer(release["zip"], f"{EXP}.zip", lifetime=600) as s:
        yield s


@pytest.fixture(scope="module")
def downloaded(release, server, tmp_path_factory):
    """`amnet models download` cut off a third of the way, then run again: it resumes and
    converts. Module-scoped: the download and conversion are the costly part."""
    home = tmp_path_factory.mktemp("amnet_home")
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMNET_HOME", str(home))
        mp.setenv("AMNET_HUB_MIRROR", server.base + "/")
        mp.setattr(hub, "DOWNLOAD_RETRIES", 0)     # the cut must end the first run
        cut = len(release["zip"]) // 3
        server.cut_after = cut
        first = runner.invoke(main, ["models", "download", NAME])
        folder = home / "models" / NAME
        parts = [(p.name, p.stat().st_size) for p in folder.glob("*.part")]
        ranges_first = list(server.ranges)
        second = runner.invoke(main, ["models", "download", NAME])
        listing = runner.invoke(main, ["models", "list"])
    return {"home": home, "folder": folder, "cut": cut, "first": first, "parts": parts,
            "ranges_first": ranges_first, "ranges": list(server.ranges), "second": second,
            "listing": listing}


@pytest.fixture
def hub_env(downloaded, server, monkeypatch):
    monkeypatch.setenv("AMNET_HOME", str(downloaded["home"]))
    monkeypatch.setenv("AMNET_HUB_MIRROR", server.base)
    return downloaded


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i in range(3):
        write_image(root / f"p{i}.jpg", "rgb", w=64 + 16 * i, h=48, seed=i)
    return root


# ---- the catalogue -------------------------------------------------------------------------------

def test_catalogue_restates_the_release_lists(tmp_path, monkeypatch):
    monkeypatch.setenv("AMNET_HOME", str(tmp_path))
    entries = {e.name: e for e in hub.catalogue()}
    assert list(entries) == ["lamem-resnet50", "lamem-resnet50-noatt", "lamem-resnet101",
                             "sun-resnet50", "sun-resnet50-noatt", "ava-resnet101"]
    e = entries[NAME]
    assert (e.file, e.splits, e.size, e.backbone, e.dataset) == \
        ("lamem_ResNet50FC_lstm3.zip", 5, "822 MB", "resnet50", "LaMem")
    assert e.url == "https://drive.google.com/file/d/1N3t5QIi2rZng0TZJUFT5achCHyJn8Fg0/view?usp=sharing"
    assert e.experiment == EXP and e.licence.startswith("MIT")
    assert entries["lamem-resnet101"].size == "1.2 GB"
    assert entries["sun-resnet50-noatt"].splits == 25 and not entries["sun-resnet50-noatt"].attention
    assert entries["ava-resnet101"].target == "aesthetics" and entries["ava-resnet101"].splits is None
    assert len({x.drive_id for x in entries.values()}) == 6

    r = CliRunner().invoke(main, ["models", "list"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["name", "data", "set", "backbone", "splits", "size", "downloaded"]
    assert lines[1].split() == [NAME, "LaMem", "resnet50", "5", "822", "MB", "no"]
    assert "AVA (aesthetics)" in lines[6] and lines[6].split()[-2:] == ["?", "no"]
    assert "github.com/ok1zjf/AMNet" in r.output and str(tmp_path / "models") in r.output

    with pytest.raises(WeightsError, match="no published model 'nope'; one of lamem-resnet50, "):
        hub.get("nope")
    r = CliRunner().invoke(main, ["models", "download", "nope"])
    assert r.exit_code == 1 and "amnet models list" in _error_line(r.output)


def test_default_home_is_the_user_cache(monkeypatch):
    import platformdirs
    monkeypatch.delenv("AMNET_HOME", raising=False)
    assert hub.home() == Path(platformdirs.user_cache_dir("amnet"))
    assert hub.model_dir(NAME) == hub.home() / "models" / NAME


# ---- download, resume, sha256, unzip, convert ----------------------------------------------------

def test_interrupted_download_resumes(downloaded, release):
    d = downloaded
    assert d["first"].exit_code == 1
    line = _error_line(d["first"].output)
    # the .part gdown left holds what arrived (in whole 512 KiB chunks: a torn one is dropped)
    assert len(d["parts"]) == 1
    have = d["parts"][0][1]
    assert d["cut"] - 512 * 1024 < have <= d["cut"]
    assert f"interrupted after {have} bytes" in line and d["parts"][0][0] in line
    assert f"run `amnet models download {NAME}` again to resume" in line
    assert d["ranges_first"] == [None]
    assert d["second"].exit_code == 0, d["second"].output
    # the second run asked only for the rest
    assert d["ranges"][len(d["ranges_first"]):][-1] == f"bytes={have}-"
    zip_path = d["folder"] / f"{EXP}.zip"
    assert zip_path.read_bytes() == release["zip"]
    assert not list(d["folder"].glob("*.part"))


def test_sha256_recorded_and_splits_converted(downloaded, release, server):
    folder = downloaded["folder"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(release["zip"]).hexdigest()
    assert manifest["bytes"] == len(release["zip"])
    assert manifest["source_url"] == server.url and manifest["converted"] is True
    assert manifest["splits"] == {
        str(s): {"dir": f"split_{s}", "member": f"{EXP}_train_{s}/weights_{e}.pkl", "epoch": e}
        for s, e in EPOCHS.items()}
    assert not (folder / "release").exists()             # the unzipped .pkl files are gone
    out = downloaded["second"].output
    assert "holds 2 splits, the authors' README says 5" in out
    assert f"{NAME}: 2 split checkpoints in {folder}" in out

    from amnet.head.checkpoint import load_checkpoint
    for s, epoch in EPOCHS.items():
        model, ckpt = load_checkpoint(folder / f"split_{s}" / "head.pt")
        tc = ckpt["train_config"]
        assert ckpt["epoch"] == epoch and tc["split"] == s and tc["dataset"] == "lamem"
        assert tc["published_model"] == NAME and tc["zip_sha256"] == manifest["sha256"]
        assert tc["zip_member"] == f"{EXP}_train_{s}/weights_{epoch}.pkl"
        assert ckpt["model_config"]["lstm_steps"] == 3 and ckpt["model_config"]["use_attention"]
        assert ckpt["backbone"]["weights_id"] == f"file:{folder / f'split_{s}' / 'backbone.pt'}"
        # the head is the release's (the conversion itself: tests/test_import_weights.py)
        assert torch.equal(model.state_dict()["eh1.weight"], release["sds"][s]["eh1.weight"])

    assert downloaded["listing"].output.splitlines()[1].split()[-1] == "yes"


def test_rerun_checks_sha256_and_spots_a_damaged_zip(hub_env, server, tmp_path, monkeypatch):
    n = len(server.ranges)
    r = CliRunner().invoke(main, ["models", "download", NAME])
    assert r.exit_code == 0, r.output
    assert "checking" in r.output and len(server.ranges) == n    # no download
    assert hub.checkpoints_for(NAME) == [hub_env["folder"] / f"split_{s}" / "head.pt"
                                         for s in EPOCHS]

    # a copy of the download whose zip then loses a byte
    home = tmp_path / "home"
    folder = home / "models" / NAME
    folder.mkdir(parents=True)
    data = bytearray((hub_env["folder"] / f"{EXP}.zip").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / f"{EXP}.zip").write_bytes(data)
    (folder / "manifest.json").write_text((hub_env["folder"] / "manifest.json").read_text()
                                          .replace('"converted": true', '"converted": false'))
    monkeypatch.setenv("AMNET_HOME", str(home))
    r = CliRunner().invoke(main, ["models", "download", NAME])
    assert r.exit_code == 1
    line = _error_line(r.output)
    assert f"{folder / f'{EXP}.zip'}: sha256 " in line
    assert "differs from" in line and "recorded at its first download" in line
    assert "delete it and run `amnet models download lamem-resnet50` again" in line
    with pytest.raises(WeightsError, match="differs from"):
        hub.checkpoints_for(NAME)


def test_zip_put_by_hand_is_recorded_and_used(release, tmp_path, monkeypatch):
    """The manual route: the zip dropped where the line says; no network (mirror unreachable).
    A zip without the release's files is refused after its sha256 is recorded."""
    monkeypatch.setenv("AMNET_HOME", str(tmp_path))
    monkeypatch.setenv("AMNET_HUB_MIRROR", "http://127.0.0.1:9")
    folder = tmp_path / "models" / NAME
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("lamem_ResNet50FC_lstm3_noatt_train_1/weights_3.pkl", b"x")
    (folder / f"{EXP}.zip").write_bytes(buf.getvalue())
    with pytest.raises(WeightsError, match=f"no {EXP}_train_<i>/weights_<e>.pkl inside"):
        hub.download(NAME, log=lambda line: None)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(buf.getvalue()).hexdigest()
    assert hub.state(NAME) == "zip"


def test_a_broken_transfer_resumes_within_the_run(tmp_path, monkeypatch):
    """A transfer that broke off after some bytes is resumed (Range) in the same run; the sha256
    covers the resumed bytes too. (This zip is no release: refused after its sha256 is kept.)"""
    monkeypatch.setenv("AMNET_HOME", str(tmp_path))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{EXP}_train_1/notes.bin", np.random.default_rng(0).bytes(3 << 20))
    payload = buf.getvalue()
    logs: list[str] = []
    with RangeServer(payload, f"{EXP}.zip") as server:
        monkeypatch.setenv("AMNET_HUB_MIRROR", server.base)
        server.cut_after = 1_600_000
        with pytest.raises(WeightsError, match=r"weights_<e>.pkl inside \(1 entries\)"):
            hub.download(NAME, progress=False, log=logs.append)
    resumed = [ln for ln in logs if ln.startswith("interrupted after ")]
    assert len(resumed) == 1 and resumed[0].endswith("; resuming")
    have = int(resumed[0].split()[2])
    assert 0 < have <= 1_600_000 and server.ranges[0] is None
    assert server.ranges[-1] == f"bytes={have}-"
    assert (tmp_path / "models" / NAME / f"{EXP}.zip").read_bytes() == payload
    manifest = json.loads((tmp_path / "models" / NAME / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(payload).hexdigest()


# ---- offline -------------------------------------------------------------------------------------

def test_offline_is_one_line_naming_the_manual_route(tmp_path, monkeypatch):
    monkeypatch.setenv("AMNET_HOME", str(tmp_path))
    monkeypatch.setenv("AMNET_HUB_MIRROR", "http://127.0.0.1:9")   # discard port: refused
    monkeypatch.setattr(hub, "DOWNLOAD_RETRIES", 0)
    r = CliRunner().invoke(main, ["models", "download", NAME])
    assert r.exit_code == 1
    line = _error_line(r.output)
    assert line.startswith(f"Error: cannot download {NAME} from http://127.0.0.1:9/{EXP}.zip "
                           "([Errno 111] Connection refused); or by hand: download "
                           f"{EXP}.zip from https://drive.google.com/file/d/")
    assert f"put it at {tmp_path / 'models' / NAME / (EXP + '.zip')}" in line
    assert f"`amnet import-weights {EXP}_train_<i>/weights_<e>.pkl OUTDIR` for each split" in line
    assert hub.state(NAME) == "no"


def test_offline_drive_fetch_through_gdown(tmp_path, photos, monkeypatch):
    """The real route (Google Drive through gdown), with every connection sent to a proxy that
    refuses: what a machine without network sees, whatever this one has. Through predict."""
    monkeypatch.setenv("AMNET_HOME", str(tmp_path))
    monkeypatch.delenv("AMNET_HUB_MIRROR", raising=False)
    for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    r = CliRunner().invoke(main, ["predict", "--model", NAME, str(photos),
                                  "--out", str(tmp_path / "s.csv")])
    assert r.exit_code == 1
    line = _error_line(r.output)
    assert line.startswith(f"Error: cannot download {NAME} (")
    assert "Connection refused" in line
    assert f"download {EXP}.zip from {hub.get(NAME).url}" in line
    assert "amnet import-weights" in line
    assert not (tmp_path / "s.csv").exists()


# ---- predict --model: the split heads averaged, each on its own trunk ----------------------------

def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_predict_model_averages_the_splits(hub_env, server, photos, tmp_path):
    from amnet.predict.predictor import Predictor

    n = len(server.ranges)
    out = tmp_path / "scores.csv"
    r = CliRunner().invoke(main, ["predict", "--model", NAME, str(photos), "--out", str(out),
                                  "--precision", "fp32", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output and len(server.ranges) == n   # converted: no download
    rows = _rows(out)
    assert [Path(row["path"]).name for row in rows] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert {"score_split_1", "score_split_2"} <= set(rows[0])

    heads = hub.checkpoints_for(NAME)
    both = Predictor.from_checkpoint(heads, "cpu", precision="fp32")
    assert len(both.branches) == 2                 # two drifted trunks, two forwards
    singles = [Predictor.from_checkpoint(h, "cpu", precision="fp32") for h in heads]
    files = sorted(photos.iterdir())
    per_split = np.stack([p.predict(files).score for p in singles], 1)       # [3, 2]
    scores = np.array([float(row["score"]) for row in rows])
    np.testing.assert_allclose(scores, per_split.mean(1), atol=2e-6)
    np.testing.assert_allclose([[float(row["score_split_1"]), float(row["score_split_2"])]
                                for row in rows], per_split, atol=2e-6)
    assert np.abs(per_split[:, 0] - per_split[:, 1]).max() > 1e-4   # the splits disagree

    # why one shared trunk would not do: the drifted BN statistics change the features, and the
    # second split's head on the first split's trunk scores differently from the release
    x = torch.stack([singles[0].transform(singles[0].load_image(f)) for f in files])
    f1, f2 = singles[0].features(x), singles[1].features(x)
    assert (f1 - f2).abs().max() > 1e-2 * f1.abs().max()
    shared = singles[1].predict_features(f1).score
    assert np.abs(shared - per_split[:, 1]).max() > 1e-4


@pytest.mark.slow
def test_from_pretrained(hub_env, server, photos):
    from amnet.predict.predictor import Predictor

    n = len(server.ranges)
    p = Predictor.from_pretrained(NAME, device="cpu", precision="fp32")
    assert [h.parent.name for h in p.checkpoints] == ["split_1", "split_2"]
    assert len(p.branches) == 2 and p.demo_warning is None
    single = [Predictor.from_checkpoint(h, "cpu", precision="fp32").predict(photos / "p1.jpg")
              for h in p.checkpoints]
    r = p.predict(photos / "p1.jpg")
    assert r.score == pytest.approx(np.mean([s.score for s in single]), abs=2e-6)
    np.testing.assert_allclose(r.per_checkpoint, [s.score for s in single], atol=2e-6)
    np.testing.assert_allclose(r.attention, np.mean([s.attention for s in single], 0), atol=1e-6)
    assert len(server.ranges) == n
    with pytest.raises(WeightsError, match="bring 2 different backbones"):
        Predictor.from_checkpoint(p.checkpoints, "cpu", backbone=False)   # a cache: one backbone
    with pytest.raises(WeightsError, match="bring 2 different backbones"):
        Predictor.from_checkpoint(p.checkpoints, "cpu", weights="random:0")


def test_identical_trunks_share_one_forward(hub_env, photos, tmp_path):
    """Had the release's splits kept one trunk, it would run once for all heads."""
    from amnet.head.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
    from amnet.predict.predictor import Predictor

    h1, h2 = hub.checkpoints_for(NAME)
    _, meta1 = load_checkpoint(h1)
    model2, meta2 = load_checkpoint(h2)
    twin = save_checkpoint(make_checkpoint(model2, backbone=meta1["backbone"],
                                           train_config=meta2["train_config"]),
                           tmp_path / "twin" / "head.pt")
    p = Predictor.from_checkpoint([h1, twin], "cpu", precision="fp32")
    assert len(p.branches) == 1 and p.branches[0][0] == [0, 1]
    f = p.features(p.transform(p.load_image(photos / "p0.jpg")).unsqueeze(0))
    direct = [h.predict(f)[0].item() for h in p.heads]
    assert p.predict(photos / "p0.jpg").score == pytest.approx(np.mean(direct), abs=1e-6)


def test_predict_needs_a_checkpoint_or_a_model(photos, tmp_path):
    """Neither source, or both: a usage error that says which (the same for serve and export)."""
    r = CliRunner().invoke(main, ["predict", str(photos), "--out", str(tmp_path / "x.csv")])
    assert r.exit_code == 2 and r.output.endswith(NO_MODEL)
    r = CliRunner().invoke(main, ["predict", str(photos), "--out", str(tmp_path / "x.csv"),
                                  "--model", "lamem-resnet50",
                                  "--checkpoint", str(photos / "p0.jpg")])
    assert r.exit_code == 2 and r.output.endswith(BOTH_MODELS)
