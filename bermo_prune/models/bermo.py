"""BERMo: BERT whose classifier reads an ELMo-style scalar mix of all hidden states.

Kodge & Roy (2021, arXiv 2110.15802) publish only the abstract, so the unknown details follow
ELMo's ``ScalarMix`` (Peters et al. 2018) and are config options:

* ``bermo_mix_embeddings``: mix the embedding output too (N+1 states, ELMo mixes its token layer).
* ``bermo_pooling``: ``"cls"`` feeds the mixed [CLS] through BERT's pooler (like BERT's own head);
  ``"mean"`` mean-pools the mixed sequence over real tokens before the pooler's dense+tanh.
* ``bermo_layer_norm``: ELMo's optional per-state layer norm before mixing (off by default).

Mix logits start at zero (uniform weights) and gamma at one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertConfig, BertModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertPreTrainedModel

from bermo_prune.models.compact_shapes import apply_compact_shapes

POOLING_MODES = ("cls", "mean")


class BermoConfig(BertConfig):
    model_type = "bermo"

    def __init__(
        self,
        bermo_mix_embeddings: bool = True,
        bermo_pooling: str = "cls",
        bermo_layer_norm: bool = False,
        **kwargs,
    ):
        if bermo_pooling not in POOLING_MODES:
            raise ValueError(f"bermo_pooling must be one of {POOLING_MODES}, got {bermo_pooling!r}")
        self.bermo_mix_embeddings = bermo_mix_embeddings
        self.bermo_pooling = bermo_pooling
        self.bermo_layer_norm = bermo_layer_norm
        super().__init__(**kwargs)

    @classmethod
    def from_bert_config(cls, bert_config: BertConfig, **bermo_options) -> "BermoConfig":
        values = bert_config.to_dict()
        for key in ("model_type", "architectures", "transformers_version"):
            values.pop(key, None)
        values.update(bermo_options)
        return cls(**values)


class ScalarMix(nn.Module):
    """gamma * sum_k softmax(w)_k * h_k over a list of equally shaped hidden states."""

    def __init__(self, num_states: int, layer_norm: bool = False):
        super().__init__()
        self.num_states = num_states
        self.layer_norm = layer_norm
        self.mix_logits = nn.Parameter(torch.zeros(num_states))
        self.gamma = nn.Parameter(torch.ones(()))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.mix_logits.zero_()
            self.gamma.fill_(1.0)

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.mix_logits, dim=0)

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        if len(states) != self.num_states:
            raise ValueError(f"ScalarMix expects {self.num_states} states, got {len(states)}")
        if self.layer_norm:
            states = [F.layer_norm(h, h.shape[-1:]) for h in states]
        stacked = torch.stack(states, dim=0)
        weights = self.weights().to(stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))
        return self.gamma * (weights * stacked).sum(dim=0)


class BermoForSequenceClassification(BertPreTrainedModel):
    config_class = BermoConfig

    def __init__(self, config: BermoConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config)
        apply_compact_shapes(self.bert, config)  # a compacted checkpoint's per-layer shapes
        num_states = config.num_hidden_layers + (1 if config.bermo_mix_embeddings else 0)
        self.scalar_mix = ScalarMix(num_states, layer_norm=config.bermo_layer_norm)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        # Loading builds missing parameters through _init_weights, so the mix must be set here
        # (not only in ScalarMix.__init__) to start uniform when converted from a BERT checkpoint.
        if isinstance(module, ScalarMix):
            module.reset_parameters()
        else:
            super()._init_weights(module)

    def layer_weights(self) -> list[float]:
        return self.scalar_mix.weights().detach().cpu().tolist()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=True,
            return_dict=True,
            **kwargs,
        )
        states = list(outputs.hidden_states)
        if not self.config.bermo_mix_embeddings:
            states = states[1:]
        mixed = self.scalar_mix(states)
        pooled = self._pool(mixed, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = sequence_classification_loss(self.config, logits, labels) if labels is not None else None
        output = SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )
        # return_dict=False: the plain tuple BertForSequenceClassification gives, (loss,) logits, ...
        return output if return_dict is not False else output.to_tuple()

    def _pool(self, mixed: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        pooler = self.bert.pooler
        if self.config.bermo_pooling == "cls":
            return pooler(mixed)
        if attention_mask is None:
            summary = mixed.mean(dim=1)
        else:
            weights = attention_mask.unsqueeze(-1).to(mixed.dtype)
            summary = (mixed * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return pooler.activation(pooler.dense(summary))


def sequence_classification_loss(config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss BertForSequenceClassification uses, so BERT and BERMo train on the same objective."""
    if config.num_labels == 1:
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
    return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
