"""RLMRec-Con: ID embeddings aligned contrastively with LLM representations (``--method=rlmrec``).

Ren et al., "Representation Learning with Large Language Models for Recommendation" (WWW
2024), §3 "contrastive alignment" (RLMRec-Con): the mutual information between the
collaborative representation ``e_i`` and the LLM semantic representation ``s_i`` is
maximised through the density ratio ``f(s_i, e_i) = exp(sim(σ↓(s_i), e_i))``, i.e. the
InfoNCE loss

    L_con = -1/|B| Σ_{i∈B} log [ exp(cos(e_i, σ↓(s_i))/τ) / Σ_{j∈B} exp(cos(e_i, σ↓(s_j))/τ) ]

with ``σ↓`` an MLP mapping the LLM space to the ID space, and the model trained on
``L = L_rec + β·L_con``.  As in the reference code (``lightgcn_plus.py``, ``cal_infonce_loss``):
``σ↓ = Linear(d, (d+h)/2) → LeakyReLU → Linear((d+h)/2, h)`` with Xavier-uniform weights,
cosine similarity, in-batch negatives, defaults ``β = 1e-2`` (``kd_weight``) and
``τ = 0.2`` (``kd_temperature``).

Sequential adaptation: the paper's backbones are graph CF models with user and item
profiles; a sequential model has no user embedding (the user is the encoded sequence) and
no user profiles here, so only the item side is aligned — the batch's distinct target
items ``B`` (BERT4Rec: the items at its masked positions).  The reference adds a third
InfoNCE term over the sampled negative items; CE over all items samples none, so there is
none here.  ``σ↓``'s biases start at zero (the reference keeps PyTorch's default
initialisation for them).  ``s_i`` is the prefill LLM embedding of the item.  The ID table stays the item representation; ``σ↓`` is used by the
loss only, so inference is the backbone's, at no extra cost.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_genair.model.baselines.common import BaselineMixin, define_models


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean InfoNCE of ``anchor[i]`` against ``positive[i]``, the other rows as negatives (cosine)."""
    logits = F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(anchor), device=anchor.device))


class RLMRecMixin(BaselineMixin):
    """RLMRec-Con: InfoNCE between ID embeddings and MLP(LLM embeddings) of the batch items."""

    method = "rlmrec"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        features = self.llm_features(config, dataset)
        self.register_buffer("llm_table", features, persistent=False)
        width = self.item_embedding.embedding_dim
        hidden = (features.shape[1] + width) // 2
        self.semantic_mlp = nn.Sequential(nn.Linear(features.shape[1], hidden), nn.LeakyReLU(),
                                          nn.Linear(hidden, width))  # σ↓
        for layer in self.semantic_mlp:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.rlmrec_weight = float(config["rlmrec_weight"] or 0.0)
        self.rlmrec_temperature = float(config["rlmrec_temperature"])

    def alignment_loss(self, items: torch.Tensor) -> torch.Tensor:
        """``L_con`` over ``items`` (distinct internal ids)."""
        return info_nce(self.item_embedding(items), self.semantic_mlp(self.llm_table[items]),
                        self.rlmrec_temperature)

    def auxiliary_loss(self, interaction):
        if self.rlmrec_weight <= 0:
            return None
        return self.rlmrec_weight * self.alignment_loss(self.batch_target_items(interaction))


MODELS = define_models(RLMRecMixin, "RLMRec", __name__)
RLMRecSASRec, RLMRecGRU4Rec, RLMRecBERT4Rec = MODELS["SASRec"], MODELS["GRU4Rec"], MODELS["BERT4Rec"]
build = MODELS.build
