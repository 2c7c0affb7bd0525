"""bermo-prune: pruning BERT and BERMo (BERT with an ELMo-style scalar mix of all layers)."""

from transformers import AutoConfig, AutoModelForSequenceClassification

from bermo_prune.api import PruningCallback, load_recipe, to_bermo
from bermo_prune.errors import BermoPruneError
from bermo_prune.models import BermoConfig, BermoForSequenceClassification, load_classifier
from bermo_prune.models.compact_shapes import CompactBertConfig, CompactBertForSequenceClassification

from bermo_prune.recipes import resolve_recipe
from bermo_prune.runs import finetune, prune

__version__ = "0.1.0"

AutoConfig.register(BermoConfig.model_type, BermoConfig, exist_ok=True)
AutoModelForSequenceClassification.register(BermoConfig, BermoForSequenceClassification, exist_ok=True)
AutoConfig.register(CompactBertConfig.model_type, CompactBertConfig, exist_ok=True)
AutoModelForSequenceClassification.register(CompactBertConfig, CompactBertForSequenceClassification, exist_ok=True)

__all__ = [
    "BermoConfig", "BermoForSequenceClassification", "BermoPruneError", "PruningCallback", "finetune", "load_classifier",
    "load_recipe", "prune", "resolve_recipe", "to_bermo", "__version__",
]
