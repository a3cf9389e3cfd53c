"""LLMEmb: LLM embeddings through an adapter, aligned to a collaborative ID table (``--method=llmemb``).

Liu et al., "LLMEmb: Large Language Model Can Be a Good Embedding Generator for Sequential
Recommendation" (AAAI 2025); reference code ``models/Adapter.py``, ``models/LLMEmb.py``.

* Stage 1, *supervised contrastive fine-tuning* (SCFT, paper §3.2) fine-tunes the LLM
  itself with attribute-level augmentation.  **Skipped**: the frozen prefill embeddings
  every baseline shares stand in for the SCFT-tuned LLM's item embeddings (GenAIR's
  extractor does no LLM fine-tuning), so this measures the method's stage 2 on the same
  embeddings as the other baselines.
* Stage 2, *recommendation adaptation training* (RAT, paper §3.3): the cached LLM item
  embeddings stay frozen and a trainable adapter produces the item table of the sequential
  model, ``e_i = Adapter(x_i)`` (reference ``Linear(d, d/2) → Linear(d/2, h)``); it is
  trained on ``L = L_rec + α·L_align``, where ``L_align`` aligns ``e_i`` of the batch's
  target items with the item embeddings ``c_i`` of a pretrained ID-based sequential
  model (the reference loads SASRec's ``itm_emb_sasrec.pkl`` for every backbone).
  ``L_align`` is the reference's ``Contrastive_Loss2`` (:func:`soft_contrastive_loss`):
  symmetric cross-entropy of the logits ``c·eᵀ/τ`` against the soft targets
  ``softmax((c·cᵀ + e·eᵀ)/2·τ)``; ``α = 0.01``, ``τ = 2`` as in the reference's Beauty
  script (``experiments/beauty/srs/llmemb.bash``; its argparse defaults are 0.1 and 1).
  The reference aligns every non-padding target position (duplicates count again); here
  each distinct target item of the batch once, as for RLMRec and GenAIR's calibration.

The collaborative table ``c``:

* ``llmemb_id_checkpoint: <path>`` — a RecBole checkpoint of an ID model on the same data
  set (e.g. ``--method=base``, any backbone with the same item width): its
  ``item_embedding.weight``, frozen (the paper's setting);
* ``~`` (default) — no pretrained model is required: a plain ID model of the same backbone
  is **co-trained** alongside on its own recommendation loss (``L += L_rec^ID``) and its
  table enters ``L_align`` with stop-gradient, so it is a teacher as a pretrained one
  would be.  It is not used at inference.

Inference scores with the adapter table alone, cached in eval mode (no extra cost).
BERT4Rec's mask token is a trainable row (reference: ``mask_embedding``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from recbole_genair.compat import load_checkpoint
from recbole_genair.model.baselines.common import BaselineMixin, adapted_llm_table, define_models, recbole_backbone


def soft_contrastive_loss(x: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """The reference's ``Contrastive_Loss2(τ)(x, y)``: CLIP-style loss with soft in-modal targets."""
    logits = x @ y.T / temperature
    targets = F.softmax((y @ y.T + x @ x.T) / 2 * temperature, dim=-1)
    x_loss = -(targets * F.log_softmax(logits, dim=-1)).sum(dim=1)
    y_loss = -(targets.T * F.log_softmax(logits.T, dim=-1)).sum(dim=1)
    return ((x_loss + y_loss) / 2).mean()


# Settings that decide RecBole's item-id mapping (with the data files themselves): an ID table
# trained under other values numbers the items differently, row i would be another item.
ID_MAPPING_KEYS = ("dataset", "USER_ID_FIELD", "ITEM_ID_FIELD", "load_col", "unload_col", "unused_col",
                   "rm_dup_inter", "val_interval", "filter_inter_by_user_or_item", "user_inter_num_interval",
                   "item_inter_num_interval", "alias_of_item_id")


def checkpoint_item_table(path: str | Path, n_items: int, width: int, config=None) -> torch.Tensor:
    """``[n_items, width]`` item table of a RecBole checkpoint (its ``item_embedding.weight``).

    Rows are RecBole's internal item ids, so the checkpoint must come from the same data set
    loaded the same way: its :data:`ID_MAPPING_KEYS` must equal ``config``'s, and its table
    must have exactly ``n_items`` rows (``+ 1``: BERT4Rec's mask token).
    """
    checkpoint = load_checkpoint(path)
    state = checkpoint.get("state_dict", {})
    table = state.get("item_embedding.weight")
    if table is None:
        raise ValueError(f"{path}: no item_embedding.weight in the checkpoint's state_dict "
                         f"(keys: {sorted(state)[:8]}...); give an ID model's checkpoint")
    saved = getattr(checkpoint.get("config"), "final_config_dict", None)
    if config is not None and saved is not None:
        differ = [f"{k}: {saved.get(k)!r} there, {config[k]!r} here" for k in ID_MAPPING_KEYS
                  if saved.get(k) != config[k]]
        if differ:
            raise ValueError(f"{path}: its item ids were assigned under other data settings ("
                             + "; ".join(differ) + "); its rows would be other items")
    if table.shape[0] not in (n_items, n_items + 1) or table.shape[1] != width:
        raise ValueError(f"{path}: item table {tuple(table.shape)} does not fit {n_items} items x width {width}")
    return table[:n_items].detach().float().clone()


class LLMEmbMixin(BaselineMixin):
    """LLMEmb (RAT stage): adapter over frozen LLM embeddings, aligned to an ID item table."""

    method = "llmemb"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        original = self.item_embedding
        self.item_embedding = adapted_llm_table(self.llm_features(config, dataset), original)
        self.align_weight = float(config["llmemb_alpha"] or 0.0)
        self.align_temperature = float(config["llmemb_temperature"])
        path = config["llmemb_id_checkpoint"]
        self.id_model = None
        if path:
            self.register_buffer("id_table", checkpoint_item_table(path, self.n_items, original.embedding_dim,
                                                                   config))
        else:
            self.id_model = recbole_backbone(type(self))(config, dataset)

    def collaborative_table(self) -> torch.Tensor:
        """``c``: the pretrained (frozen) or co-trained (stop-gradient) ID item table."""
        if self.id_model is None:
            return self.id_table
        return self.id_model.item_embedding.weight[:self.n_items].detach()

    def alignment_loss(self, items: torch.Tensor) -> torch.Tensor:
        """``L_align`` over ``items`` (distinct internal ids)."""
        return soft_contrastive_loss(self.collaborative_table()[items], self.item_embedding(items),
                                     self.align_temperature)

    def auxiliary_loss(self, interaction):
        loss = None
        if self.id_model is not None:
            loss = self.id_model.calculate_loss(interaction)
        if self.align_weight > 0:
            align = self.align_weight * self.alignment_loss(self.batch_target_items(interaction))
            loss = align if loss is None else loss + align
        return loss


MODELS = define_models(LLMEmbMixin, "LLMEmb", __name__)
LLMEmbSASRec, LLMEmbGRU4Rec, LLMEmbBERT4Rec = MODELS["SASRec"], MODELS["GRU4Rec"], MODELS["BERT4Rec"]
build = MODELS.build
