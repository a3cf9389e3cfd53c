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
from recbole_genair.model.calibration import CalibrationLoss, PairWeights
from recbole_genair.model.layers import ArchetypeItemEmbedding, standardize_columns
from recbole_genair.model.mixin import FeatureModelMixin


class GenAIRMixin(FeatureModelMixin):
    """Archetype item table + calibration loss; put it before the RecBole backbone in the MRO."""

    method = "genair"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        features = self.scale_features(self.llm_features(config, dataset), config)
        original = self.item_embedding
        width = config["projector_width"]
        self.item_embedding = ArchetypeItemEmbedding(
            features, original.embedding_dim, n_extra=original.num_embeddings - self.n_items,
            layers=int(config["projector_layers"]),
            width=int(width * original.embedding_dim) if width else None,
            dropout=float(config["projector_dropout"] or 0.0),
            unit_rows=self.unit_item_rows(config), autocast_dtype=self.projector_dtype(config),
            id_residual=bool(config["item_id_residual"]))
        self.calibration_alpha = float(config["calibration_alpha"] or 0.0)
        self.calibration = None
        if self.calibration_alpha > 0:
            weights = PairWeights.from_scores(normalized_scores(dataset.item_cooccurrence),
                                              gamma=float(config["calibration_gamma"]))
            self.calibration = CalibrationLoss(weights, t=float(config["calibration_t"]),
                                               variant=str(config["calibration_variant"]))

    @classmethod
    def scale_features(cls, features: torch.Tensor, config) -> torch.Tensor:
        """``feature_scaling``: ``none`` (the paper) or ``standardize`` — every column centred
        and divided by its standard deviation over the items (row 0, padding, stays zero);
        on PCA features that is whitening: each component gets unit variance, so the
        low-variance components that tell similar items apart are as loud as the first ones."""
        if cls.config_choice(config, "feature_scaling", ("none", "standardize")) == "none":
            return features
        scaled = torch.zeros_like(features)
        scaled[1:] = standardize_columns(features[1:])
        return scaled

    @classmethod
    def unit_item_rows(cls, config) -> bool:
        return cls.config_choice(config, "item_table_norm", ("none", "l2")) == "l2"

    @classmethod
    def projector_dtype(cls, config):
        dtypes = {"float32": None, "bfloat16": torch.bfloat16}
        return dtypes[cls.config_choice(config, "projector_dtype", dtypes)]

    def auxiliary_loss(self, interaction):
        """``α·L_cal`` on the batch's distinct target items (inside the training step's table)."""
        if self.calibration is None:
            return None
        items = self.batch_target_items(interaction)
        return self.calibration_alpha * self.calibration(self.item_embedding(items), items)


class GenAIRSASRec(GenAIRMixin, SASRec):
    """GenAIR item representations on RecBole's SASRec."""

    backbone = "SASRec"


class GenAIRGRU4Rec(GenAIRMixin, GRU4Rec):
    """GenAIR item representations on RecBole's GRU4Rec."""

    backbone = "GRU4Rec"


class GenAIRBERT4Rec(GenAIRMixin, BERT4Rec):
    """GenAIR item representations on RecBole's BERT4Rec (mask token stays a trainable row)."""

    backbone = "BERT4Rec"


MODELS = {cls.backbone: cls for cls in (GenAIRSASRec, GenAIRGRU4Rec, GenAIRBERT4Rec)}


def build(backbone_class):
    """Registry hook: the GenAIR class for a RecBole backbone class."""
    return MODELS[backbone_class.__name__]
