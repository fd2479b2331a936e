"""amnet.head.feeding at scale (issue 23): sorted batch reads, the RAM budget, a few steps of an epoch."""
import numpy as np
import pytest
import torch

from amnet.core.settings import AMNetConfig, TrainConfig
from amnet.head.epochs import train_epoch
from amnet.head.feeding import SplitPart, attach_sources, open_cache, read_batch
from amnet.head.model import AMNet
from tests.test_train import write_cache

N, C, G = 40, 8, 4


@pytest.fixture
def cache_file(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"img{i:03d}.jpg" for i in range(N)]
    feats = rng.standard_normal((N, C, G, G)).astype(np.float16)
    return write_cache(tmp_path / "c.h5", names, feats, feats_flip=feats[..., ::-1].copy()), names


def test_read_batch_equals_one_get_per_row(cache_file):
    """Grouped, file-ordered reads return the rows in the batch's order, flips per row."""
    path, names = cache_file
    batch = [names[i] for i in (17, 3, 39, 3, 0, 25)]      # random order, a repeat
    flips = [False, True, True, False, False, True]
    with open_cache(path) as cache:
        got = read_batch(cache, batch, flips, [0] * len(batch))
        want = torch.stack([cache.get(n, flip=f) for n, f in zip(batch, flips)])
    assert got.dtype == torch.float16 and got.shape == (6, C, G, G)
    assert torch.equal(got, want)


def test_a_ram_budget_makes_auto_lazy(cache_file):
    """N x C x G x G float16 = 40 x 256 B = 10,240 B: preloaded under a 1 MB budget, lazy under
    a budget whose half is below it."""
    path, names = cache_file
    scores = np.linspace(0.4, 0.9, N)
    with open_cache(path) as cache:
        for budget, want in ((10**6, "ram"), (20_000, "lazy")):
            part = SplitPart(names, scores)
            mode = attach_sources(path, cache, {"train": part}, {}, "auto", 0,
                                  torch.device("cpu"), ram_budget=budget)
            assert mode == want, budget
            batch = next(iter(part.source.batches([torch.tensor([5, 1, 30])])))
            assert torch.equal(batch, cache.load([names[5], names[1], names[30]]))


def test_train_epoch_stops_after_max_batches(cache_file):
    path, names = cache_file
    scores = np.linspace(0.4, 0.9, N).astype(np.float32)
    cfg = TrainConfig(batch_size=8)
    model = AMNet(AMNetConfig(in_channels=C, grid=G, feature_dim=8, hidden_dim=8, regressor_dim=4,
                              target_mean=0.65))
    opt = torch.optim.Adam(model.parameters())
    seen = []
    with open_cache(path) as cache:
        part = SplitPart(names, scores)
        attach_sources(path, cache, {"train": part}, {}, "ram", 0, torch.device("cpu"))
        inner = part.source.batches
        part.source.batches = lambda b, *a: (seen.append(len(b)), inner(b, *a))[1]
        loss = train_epoch(model, opt, part, torch.from_numpy(scores), torch.Generator().manual_seed(0),
                           False, cfg, torch.device("cpu"), "fp32", None, max_batches=2)
    assert seen == [2] and np.isfinite(loss)
