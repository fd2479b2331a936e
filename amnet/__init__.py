"""amnet: AMNet image memorability as a two-stage feature-cache pipeline.

Heavy modules (torch, h5py) are imported lazily so that `import amnet` and the CLIs'
`--help` stay instant.
"""
__version__ = "0.1.0"

__all__ = ["Predictor", "FeatureCache", "AMNet", "__version__"]


def __getattr__(name: str):
    if name == "Predictor":
        from amnet.predict import Predictor
        return Predictor
    if name == "FeatureCache":
        from amnet.cache import FeatureCache
        return FeatureCache
    if name == "AMNet":
        from amnet.model import AMNet
        return AMNet
    raise AttributeError(f"module 'amnet' has no attribute {name!r}")
