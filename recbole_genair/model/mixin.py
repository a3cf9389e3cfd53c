"""What GenAIR and every baseline share as RecBole model mixins.

Each method is a mixin placed before RecBole's SASRec, GRU4Rec or BERT4Rec in the MRO, so the
backbone's own ``forward``/``calculate_loss``/``predict``/``full_sort_predict`` run as is.
:class:`FeatureModelMixin` gives them the data set class that carries the LLM item features,
the feature table itself, the batch's target items, and ``calculate_loss = backbone loss +
auxiliary_loss`` computed inside one training step of the item table (a computed table is
built once per step and shared by every use in it).
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch
from recbole.model.sequential_recommender import BERT4Rec
from torch import nn

from recbole_genair.data.dataset import ArchetypeDataset


def table_step(table: nn.Module, sparse: bool = False) -> ContextManager:
    """``table.step(sparse)`` for computed tables, a no-op for a plain ``nn.Embedding``."""
    step = getattr(table, "step", None)
    return step(sparse=sparse) if callable(step) else contextlib.nullcontext()


class FeatureModelMixin:
    """Common part of GenAIR's and the baselines' mixins."""

    method = ""
    dataset_class = ArchetypeDataset

    @staticmethod
    def config_choice(config, key: str, choices):
        """``config[key]`` (the first choice when unset), refused unless one of ``choices``."""
        name = str(config[key] or next(iter(choices)))
        if name not in choices:
            raise ValueError(f"{key} must be one of {', '.join(choices)}; got {name!r}")
        return name

    def llm_features(self, config, dataset) -> torch.Tensor:
        """``[n_items, d]`` LLM item embeddings (``genair_features``, concatenated), row 0 zero."""
        names = list(config["genair_features"] or [])
        if not names:
            raise ValueError("genair_features is empty: name the archetype embeddings to use")
        table = torch.cat([dataset.item_features[name] for name in names], dim=-1).float()
        if table.shape[0] != self.n_items:
            raise ValueError(f"feature table has {table.shape[0]} rows for {self.n_items} items")
        return table

    def batch_target_items(self, interaction) -> torch.Tensor:
        """The distinct items this batch predicts (BERT4Rec: its masked positions' items)."""
        if isinstance(self, BERT4Rec):
            items = interaction[self.POS_ITEMS].flatten()
        else:
            items = interaction[self.POS_ITEM_ID]
        return torch.unique(items[items > 0])

    def auxiliary_loss(self, interaction) -> Optional[torch.Tensor]:
        """The method's loss term added to the backbone's (``None``: none)."""
        return None

    def sparse_step(self) -> bool:
        """Whether a training step needs only looked-up rows of the item table: RecBole's
        BPR scores the batch's positive and negative items by lookup; CE reads the whole
        table (every item is a logit)."""
        return getattr(self, "loss_type", "CE") == "BPR"

    def calculate_loss(self, interaction):
        with table_step(self.item_embedding, sparse=self.sparse_step()):
            loss = super().calculate_loss(interaction)
            extra = self.auxiliary_loss(interaction)
        return loss if extra is None else loss + extra
