"""`amnet import-weights`: the authors' released .pkl layout (spec section 9) -> head.pt + backbone.pt.

The released file is rebuilt here from the spec's key layout with random values, and our eval-mode
predictions are compared with a plain forward pass written below from the spec text (section 2).
"""
import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner
from conftest import RELEASE_PREFIX, release_state_dict

from amnet.cli import main
from amnet.core.errors import WeightsError
from amnet.head.checkpoint import load_checkpoint
from amnet.predict.released_weights import import_weights

P = RELEASE_PREFIX


@pytest.fixture(scope="module")
def published_sd():
    """{'core_cnn.core_cnn.<resnet50 keys>' + head keys} without num_batches_tracked (2018 files)."""
    return release_state_dict("resnet50")


def reference_forward(sd: dict, img: torch.Tensor, attention: bool = True, steps: int = 3,
                      arch: str = "resnet50"):
    """The spec's model, written out plainly in float64: -> (features, pred [B], outs [B,T], alphas [B,T,L])."""
    net = getattr(torchvision.models, arch)()
    res = net.load_state_dict({k[len(P):]: v for k, v in sd.items() if k.startswith(P)}, strict=False)
    assert all(k.endswith("num_batches_tracked") for k in res.missing_keys)
    net.eval()
    with torch.no_grad():
        x = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(img)))))))
    feats = x
    w = {k: v.double() for k, v in sd.items() if not k.startswith(P)}
    x = x.double()
    # 1. adapter: 1x1 conv, BN (running stats), ReLU (dropout off in eval) -> a [B, D, L]
    a = F.conv2d(x, w["inconv.weight"], w["inconv.bias"])
    a = F.batch_norm(a, w["bn1.running_mean"], w["bn1.running_var"], w["bn1.weight"], w["bn1.bias"],
                     training=False, eps=1e-5)
    a = F.relu(a)
    B, D = a.shape[:2]
    a = a.reshape(B, D, -1)                                   # l = y * 14 + x
    L = a.shape[2]
    # 2. initial state from the mean feature
    af = a.mean(2)
    h = torch.tanh(af @ w["hs1.weight"].T + w["hs1.bias"])
    c = torch.tanh(af @ w["hc1.weight"].T + w["hc1.bias"])
    # 3. static attention part, e1 without bias
    e = F.relu(torch.einsum("bdl,ed->bel", a, w["e1.weight"]))
    outs, alphas = [], []
    for _ in range(steps):
        if attention:
            s = h @ w["eh1.weight"].T + w["eh1.bias"]         # one scalar per location
            u = F.relu(e + s[:, None, :])
            score = torch.einsum("bdl,d->bl", u, w["eh3.weight"][0])
            alpha = torch.softmax(score, dim=1)
        else:
            alpha = torch.full((B, L), 1.0 / L, dtype=torch.float64)
        z = torch.einsum("bdl,bl->bd", a, alpha)              # context from a, not e
        gates = z @ w["rnn.weight_ih_l0"].T + w["rnn.bias_ih_l0"] + h @ w["rnn.weight_hh_l0"].T + w["rnn.bias_hh_l0"]
        i, f, g, o = gates.chunk(4, dim=1)                    # PyTorch's LSTM gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out = F.relu(h @ w["regnet1.weight"].T + w["regnet1.bias"]) @ w["regnet4.weight"].T + w["regnet4.bias"]
        outs.append(out[:, 0])
        alphas.append(alpha)
    outs = torch.stack(outs, 1)
    return feats, outs.mean(1) / 2 + 0.754, outs, torch.stack(alphas, 1)


def _image(seed=1):
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
def test_import_matches_reference_forward(tmp_path, published_sd):
    src = tmp_path / "lamem_ResNet50FC_lstm3_train_5" / "weights_35.pkl"
    src.parent.mkdir()
    # the legacy (non-zip) serialisation, as 2018's PyTorch 0.2 wrote
    torch.save({"model": published_sd}, src, _use_new_zipfile_serialization=False)
    rec = import_weights(src, tmp_path / "out")
    assert rec["arch"] == "resnet50" and len(rec["source_sha256"]) == 64

    model, ckpt = load_checkpoint(tmp_path / "out" / "head.pt")
    assert ckpt["epoch"] == 35
    assert ckpt["model_config"]["lstm_steps"] == 3 and ckpt["model_config"]["use_attention"]
    assert ckpt["train_config"]["source_sha256"] == rec["source_sha256"]
    bb = torch.load(tmp_path / "out" / "backbone.pt", weights_only=True)
    assert not any(k.startswith(("layer4.", "fc.")) for k in bb)      # trunk through layer3
    assert "layer3.5.conv3.weight" in bb and "bn1.num_batches_tracked" in bb

    img = _image()
    feats, pred, outs, alphas = reference_forward(published_sd, img)
    assert alphas.max() > 5 / 196                                # attention is not uniform

    # the head on the reference features
    score, steps, our_alphas = model.predict(feats)
    assert torch.allclose(score.double(), pred, atol=1e-5, rtol=0)
    assert torch.allclose(steps.double().sum(1), pred, atol=1e-5, rtol=0)
    assert torch.allclose(our_alphas.double(), alphas, atol=1e-5, rtol=0)

    # the backbone file through stage one's loader (fp32) gives the same features and prediction
    from amnet.extract.backbone import load_backbone

    trunk, spec = load_backbone(f"file:{tmp_path / 'out' / 'backbone.pt'}", precision="fp32")
    assert spec.weights_sha256 == ckpt["backbone"]["weights_sha256"]
    assert ckpt["backbone"]["arch"] == spec.arch == "resnet50"
    with torch.no_grad():
        our_feats = trunk(img)
    assert (our_feats - feats).abs().max() <= 1e-4 * feats.abs().max()
    score2, _, _ = model.predict(our_feats)
    assert torch.allclose(score2.double(), pred, atol=1e-5, rtol=0)


def test_import_noatt_from_path_via_cli(tmp_path, published_sd):
    src = tmp_path / "lamem_ResNet50FC_lstm3_noatt_train_1" / "weights_20.pkl"
    src.parent.mkdir()
    sd = {"module." + k: v for k, v in published_sd.items()}      # DataParallel-style keys
    torch.save({"model": sd}, src)
    r = CliRunner().invoke(main, ["import-weights", str(src), str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "attention off" in r.output
    rec = json.loads((tmp_path / "o" / "import.json").read_text())
    assert rec["model_config"]["use_attention"] is False

    model, _ = load_checkpoint(tmp_path / "o" / "head.pt")
    img = _image(2)
    feats, pred, _, alphas = reference_forward(published_sd, img, attention=False)
    score, _, our_alphas = model.predict(feats)
    assert torch.equal(our_alphas, torch.full((1, 3, 196), 1 / 196))
    assert torch.allclose(score.double(), pred, atol=1e-5, rtol=0)


def test_import_rejects_non_amnet_files(tmp_path):
    bad = tmp_path / "x.pkl"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, bad)
    with pytest.raises(WeightsError, match="core_cnn"):
        import_weights(bad, tmp_path / "o")
    (tmp_path / "junk.pkl").write_bytes(b"not a torch file")
    r = CliRunner().invoke(main, ["import-weights", str(tmp_path / "junk.pkl"), str(tmp_path / "o")])
    assert r.exit_code == 1 and "cannot load" in r.output


@pytest.mark.slow
def test_import_resnet101_release(tmp_path):
    """lamem_ResNet101FC / ava_ResNet101FC: layer3 of ResNet101 (23 blocks) is also 1024 wide."""
    sd = release_state_dict("resnet101", width=64, hidden=64, regressor=32)
    src = tmp_path / "lamem_ResNet101FC_lstm3_train_2" / "weights_41.pkl"
    src.parent.mkdir()
    torch.save({"model": sd}, src, _use_new_zipfile_serialization=False)
    r = CliRunner().invoke(main, ["import-weights", str(src), str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "resnet101 head" in r.output
    model, ckpt = load_checkpoint(tmp_path / "o" / "head.pt")
    assert ckpt["backbone"]["arch"] == "resnet101"
    assert ckpt["model_config"]["feature_dim"] == 64 and ckpt["model_config"]["hidden_dim"] == 64

    from amnet.extract.backbone import load_backbone
    trunk, spec = load_backbone(f"file:{tmp_path / 'o' / 'backbone.pt'}", precision="fp32")
    assert spec.arch == "resnet101" and len(trunk.layer3) == 23
    img = _image(3)
    feats, pred, _, _ = reference_forward(sd, img, arch="resnet101")
    with torch.no_grad():
        ours = trunk(img)
    assert ours.shape == (1, 1024, 14, 14)
    assert (ours - feats).abs().max() <= 1e-4 * feats.abs().max()
    score, _, _ = model.predict(ours)
    assert torch.allclose(score.double(), pred, atol=1e-5, rtol=0)
