from bermo_prune.models.bermo import BermoConfig, BermoForSequenceClassification, ScalarMix
from bermo_prune.models.load import ARCHS, checkpoint_arch, load_classifier, resolve_checkpoint

__all__ = [
    "ARCHS",
    "BermoConfig",
    "BermoForSequenceClassification",
    "ScalarMix",
    "checkpoint_arch",
    "load_classifier",
    "resolve_checkpoint",
]
