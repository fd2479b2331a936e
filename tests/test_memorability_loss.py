"""The differentiable score: `Predictor.score_tensor` and `amnet.MemorabilityLoss`, and
examples/optimise_memorability.py. Tiny: random:0 ResNet50 trunk at 64 x 64 (grid 4), narrow
heads (conftest.save_tiny_head), fp32."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import types

import pytest
import torch
from PIL import Image

import amnet
from amnet.core.errors import AmnetError
from amnet.extract.backbone import normalize, resize_tensor
from amnet.predict.predictor import Predictor
from conftest import REPO, save_tiny_head, subprocess_env

SIZE = 64
TOL = 1e-5  # score_tensor against predict, both fp32


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    return [save_tiny_head(root / f"{i}" / "head.pt", seed=i, size=SIZE) for i in (1, 2)]


@pytest.fixture(scope="module")
def predictor(heads):
    return Predictor.from_checkpoint(heads, device="cpu", precision="fp32")


def _images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


def _reference(p: Predictor, x: torch.Tensor) -> torch.Tensor:
    """predict() on the same pixels, preprocessed outside: resized and normalised."""
    pre = normalize(resize_tensor(x, SIZE), p.provenance.mean, p.provenance.std)
    return torch.from_numpy(p.predict(pre).score)


@pytest.mark.parametrize("shape", [(3, SIZE, SIZE), (3, 80, 48)])
def test_score_equals_predict(predictor, shape):
    x = _images(*shape)
    s = predictor.score_tensor(x)
    assert s.shape == (3,) and s.dtype == torch.float32 and s.requires_grad is False
    assert torch.allclose(s, _reference(predictor, x), atol=TOL, rtol=0)
    assert s.std() > 1e-3  # the images score differently: the comparison is not trivial
    # one image alone (the trunk's fp32 kernels round another batch size differently, so
    # against predict on the same one-image batch)
    single = predictor.score_tensor(x[1])
    assert single.shape == () and abs(single.item() - _reference(predictor, x[1:2]).item()) < TOL


def test_gradient_finite_and_nonzero(heads):
    loss_fn = amnet.MemorabilityLoss(heads, device="cpu")
    x = _images(2, 50, 70, seed=1).requires_grad_(True)
    loss = loss_fn(x)
    assert loss.shape == ()
    loss.backward()
    g = x.grad
    assert g.shape == x.shape and torch.isfinite(g).all()
    assert (g[0].abs().sum() > 0) and (g[1].abs().sum() > 0)
    # each image's gradient comes from its own score only
    x1 = x[:1].detach().clone().requires_grad_(True)
    loss_fn(x1).backward()
    assert torch.allclose(x1.grad[0], 2 * g[0], atol=1e-6, rtol=1e-4)  # mean over 2 vs 1


def test_loss_value_and_reductions(heads, predictor):
    x = _images(3, SIZE, SIZE, seed=2)
    s = predictor.score_tensor(x)
    none = amnet.MemorabilityLoss(predictor, reduction="none")(x)
    assert torch.allclose(none, 1 - s, atol=1e-7) and none.shape == (3,)
    assert torch.allclose(amnet.MemorabilityLoss(predictor, "sum")(x), (1 - s).sum(), atol=1e-6)
    assert torch.allclose(amnet.MemorabilityLoss(predictor)(x), (1 - s).mean(), atol=1e-6)
    with pytest.raises(ValueError, match="reduction 'max': use one of mean, sum, none"):
        amnet.MemorabilityLoss(predictor, reduction="max")


@pytest.mark.slow
def test_adam_on_pixels_raises_the_score(heads):
    loss_fn = amnet.MemorabilityLoss(heads, device="cpu")
    x = _images(1, 72, 72, seed=3).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.01)
    with torch.no_grad():
        start = loss_fn.score(x).item()
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        losses.append(loss.item())
    with torch.no_grad():
        end = loss_fn.score(x).item()
    assert end > start + 0.05, (start, end)
    assert losses[-1] < losses[0]


def test_modules_stay_frozen_and_in_eval(heads):
    # built from paths: the loss's own predictor is frozen for good
    loss_fn = amnet.MemorabilityLoss(heads, device="cpu")
    p = loss_fn.predictor
    mods = [p.trunk, *p.heads]
    assert all(not m.training for root in mods for m in root.modules())
    assert all(not q.requires_grad for root in mods for q in root.parameters())
    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {}
    loss_fn.train()  # a generator's .train() reaching the loss does not reach the predictor
    x = _images(2, SIZE, SIZE, seed=4).requires_grad_(True)
    loss_fn(x).backward()
    assert all(not m.training for root in mods for m in root.modules())
    assert all(q.grad is None for root in mods for q in root.parameters())

    # a caller's Predictor, its heads training and trainable: scored in eval mode, flags kept
    mine = Predictor.from_checkpoint(heads, device="cpu", precision="fp32")
    for h in mine.heads:
        h.train().requires_grad_(True)
    ref = _reference(p, x.detach())  # eval-mode scores (dropout off)
    loss_mine = amnet.MemorabilityLoss(mine, reduction="none")
    for _ in range(2):  # dropout would make two calls differ
        y = x.detach().clone().requires_grad_(True)
        s = 1 - loss_mine(y)
        assert torch.allclose(s, ref, atol=TOL)
        s.sum().backward()
        assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    assert all(m.training for h in mine.heads for m in h.modules())
    assert all(q.requires_grad and q.grad is None for h in mine.heads for q in h.parameters())


@pytest.mark.slow
def test_bf16_trunk_gradients(heads, predictor):
    # "mixed" (what "auto" picks where bf16 is native): layer3 in bf16, still differentiable
    loss_fn = amnet.MemorabilityLoss(heads, reduction="none", device="cpu", precision="mixed")
    assert loss_fn.predictor.trunk.precision == "mixed"
    x = _images(2, SIZE, SIZE, seed=7).requires_grad_(True)
    loss = loss_fn(x)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # near the fp32 scores (the x20 test heads amplify the bf16 rounding of the features)
    assert torch.allclose(1 - loss.detach(), predictor.score_tensor(x.detach()), atol=0.02)


def test_caller_autocast_is_switched_off_inside(predictor):
    x = _images(2, SIZE, SIZE, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = predictor.score_tensor(x)
    assert s.dtype == torch.float32
    assert torch.equal(s, predictor.score_tensor(x))


def test_bad_inputs_are_one_line_errors(heads, predictor, monkeypatch):
    with pytest.raises(ValueError, match=r"expects a float tensor \[B, 3, H, W\].*got \(2, 1, 8, 8\)"):
        predictor.score_tensor(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="got torch.uint8 \\(divide uint8 pixels by 255\\)"):
        predictor.score_tensor(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    headless = Predictor.from_checkpoint(heads, device="cpu", backbone=False)
    with pytest.raises(AmnetError, match="needs a Predictor with its backbone"):
        amnet.MemorabilityLoss(headless)
    with pytest.raises(AmnetError, match="no checkpoint given"):
        amnet.MemorabilityLoss([])
    with pytest.raises(AmnetError, match="missing.pt: checkpoint not found"):
        amnet.MemorabilityLoss("missing.pt")
    # a published name: through amnet.predict.hub; one line where this amnet has no hub
    monkeypatch.setitem(sys.modules, "amnet.predict.hub", None)  # import amnet.predict.hub -> ImportError
    with pytest.raises(AmnetError, match="model name 'lamem': published model names need "
                                         "amnet.predict.hub"):
        amnet.MemorabilityLoss("lamem")


def test_published_name_resolves_through_the_hub(heads, monkeypatch):
    asked = []

    def checkpoints_for(name):
        asked.append(name)
        return [str(h) for h in heads]

    monkeypatch.setitem(sys.modules, "amnet.predict.hub",
                        types.SimpleNamespace(checkpoints_for=checkpoints_for))
    loss_fn = amnet.MemorabilityLoss("lamem", device="cpu")
    assert asked == ["lamem"] and loss_fn.predictor.checkpoints == list(heads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_matches_cpu(heads, predictor):
    gpu = amnet.MemorabilityLoss(heads, reduction="none", device="cuda")
    x = _images(2, 80, 48, seed=6).requires_grad_(True)
    loss = gpu(x)  # a CPU tensor in, the loss back on the CPU, computed on the GPU
    assert loss.device.type == "cpu"
    loss.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # fp32 on both; cuDNN's convolutions sum in another order than oneDNN's
    assert torch.allclose(1 - loss.detach(), predictor.score_tensor(x.detach()), atol=1e-3)
    xg = x.detach().cuda().requires_grad_(True)
    assert gpu(xg).device.type == "cuda"


# ---- examples/optimise_memorability.py -------------------------------------------------------

EXAMPLE = REPO / "examples" / "optimise_memorability.py"


def _example(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLE), *args], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.slow
def test_example_runs_offline_and_reports_an_independent_score(tmp_path, capsys):
    assert "--independent" in _example("--help").stdout
    out = tmp_path / "optimised.png"
    r = _example("--steps", "4", "--workdir", str(tmp_path / "work"), "--out", str(out),
                 "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (128, 96)
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines() if "->" in ln}
    assert set(rows) == {"optimised", "independent"}, r.stdout
    before, after = (float(v) for v in rows["optimised"].split()[2:5:2])
    assert after > before  # 4 steps raise the score optimised against
    # in-process (no second interpreter): a checkpoint passed in is used as given; a missing one
    # is one line on stderr and exit status 1
    spec = importlib.util.spec_from_file_location("optimise_memorability", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    head = tmp_path / "work" / "demo-head.pt"
    assert example.main(["--steps", "1", "--checkpoint", str(head), "--out",
                         str(tmp_path / "o2.png"), "--device", "cpu"]) == 0
    assert "no --independent predictor" in capsys.readouterr().out
    assert example.main(["--checkpoint", str(tmp_path / "nope.pt"), "--device", "cpu"]) == 1
    assert capsys.readouterr().err.strip().endswith("nope.pt: checkpoint not found")
