"""amnet: AMNet image memorability as a two-stage feature-cache pipeline.

Heavy modules (torch, h5py) are imported lazily so that `import amnet` and the CLIs'
`--help` stay instant: `amnet.__version__` comes from `amnet._version` (which imports nothing),
`amnet.Predictor`, `amnet.FeatureCache`, `amnet.AMNet` and `amnet.MemorabilityLoss` are imported
on first access.
Inside the package, modules read the version from `amnet._version`, never from `amnet` itself
(the layers contract in setup.cfg: `amnet` reaches up to `amnet.predict.memorability_loss`).
"""
from amnet._version import __version__

__all__ = ["Predictor", "FeatureCache", "AMNet", "MemorabilityLoss", "__version__"]


def __getattr__(name: str):
    if name == "Predictor":
        from amnet.predict.predictor import Predictor
        return Predictor
    if name == "FeatureCache":
        from amnet.cache.reader import FeatureCache
        return FeatureCache
    if name == "AMNet":
        from amnet.head.model import AMNet
        return AMNet
    if name == "MemorabilityLoss":
        from amnet.predict.memorability_loss import MemorabilityLoss
        return MemorabilityLoss
    raise AttributeError(f"module 'amnet' has no attribute {name!r}")
