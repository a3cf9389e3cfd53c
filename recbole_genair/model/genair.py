"""GenAIR on RecBole's SASRec, GRU4Rec and BERT4Rec (paper §3, Algorithm 1).

``GenAIRMixin`` does two things to a RecBole sequential model, after the backbone's own
``__init__``:

1. replaces its ``item_embedding`` with :class:`ArchetypeItemEmbedding` — the frozen
   archetype features of the data set (``ArchetypeDataset``) through a trainable MLP
   projector — so the backbone's own forward, scoring and prediction code is used as is;
2. adds the behavioral-calibration loss (Eq. 9-15): ``L = L_rank + α·L_cal`` on the
   L2-normalised projected embeddings of the batch's distinct target items, with pair
   weights ``w = exp(-γ·S)`` from co-occurrence in training sequences.

Ablations (paper Table 3) are configuration: ``genair_features: [decoding]`` (without
prefill), ``[prefill]`` (without decoding), ``calibration_alpha: 0`` (without calibration).
"""
from __future__ import annotations

import torch
from recbole.model.sequential_recommender import BERT4Rec, GRU4Rec, SASRec

from recbole_genair.data.cooccurrence import normalized_scores
from recbole_genair.data.dataset import ArchetypeDataset
from recbole_genair.model.calibration import CalibrationLoss, PairWeights
from recbole_genair.model.layers import ArchetypeItemEmbedding


class GenAIRMixin:
    """Archetype item table + calibration loss; put it before the RecBole backbone in the MRO."""

    method = "genair"
    dataset_class = ArchetypeDataset

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        features = torch.cat([dataset.item_features[name] for name in config["genair_features"]], dim=-1)
        if features.shape[0] != self.n_items:
            raise ValueError(f"feature table has {features.shape[0]} rows for {self.n_items} items")
        original = self.item_embedding
        width = config["projector_width"]
        self.item_embedding = ArchetypeItemEmbedding(
            features, original.embedding_dim, n_extra=original.num_embeddings - self.n_items,
            layers=int(config["projector_layers"]),
            width=int(width * original.embedding_dim) if width else None,
            dropout=float(config["projector_dropout"] or 0.0))
        self.calibration_alpha = float(config["calibration_alpha"] or 0.0)
        self.calibration = None
        if self.calibration_alpha > 0:
            weights = PairWeights.from_scores(normalized_scores(dataset.item_cooccurrence),
                                              gamma=float(config["calibration_gamma"]))
            self.calibration = CalibrationLoss(weights, t=float(config["calibration_t"]),
                                               variant=str(config["calibration_variant"]))

    def target_items(self, interaction) -> torch.Tensor:
        """The items this batch predicts (the calibration loss acts on their embeddings)."""
        return interaction[self.POS_ITEM_ID]

    def calculate_loss(self, interaction):
        with self.item_embedding.step() as table:
            loss = super().calculate_loss(interaction)
            if self.calibration is not None:
                items = self.target_items(interaction)
                loss = loss + self.calibration_alpha * self.calibration(table[items], items)
        return loss


class GenAIRSASRec(GenAIRMixin, SASRec):
    """GenAIR item representations on RecBole's SASRec."""

    backbone = "SASRec"


class GenAIRGRU4Rec(GenAIRMixin, GRU4Rec):
    """GenAIR item representations on RecBole's GRU4Rec."""

    backbone = "GRU4Rec"


class GenAIRBERT4Rec(GenAIRMixin, BERT4Rec):
    """GenAIR item representations on RecBole's BERT4Rec (mask token stays a trainable row)."""

    backbone = "BERT4Rec"

    def target_items(self, interaction) -> torch.Tensor:
        items = interaction[self.POS_ITEMS].flatten()
        return items[items > 0]


MODELS = {cls.backbone: cls for cls in (GenAIRSASRec, GenAIRGRU4Rec, GenAIRBERT4Rec)}


def build(backbone_class):
    """Registry hook: the GenAIR class for a RecBole backbone class."""
    return MODELS[backbone_class.__name__]
