"""AlphaFuse: ID embeddings learned in the null space of the language embeddings (``--method=alphafuse``).

Hu et al., "AlphaFuse: Learn ID Embeddings for Sequential Recommendation in Null Space of
Language Embeddings" (SIGIR 2025).  The method (paper §3; reference code
``models/embedding.py``, ``Item_Embedding("AF")``):

1. *Semantic space decomposition* — SVD of the covariance of the centred language
   embeddings, ``Cov(x) = U·Λ·Uᵀ``.  The directions of large singular values span the
   semantic (row) space; the low-singular-value directions, where the language embeddings
   carry (almost) nothing, form the null space.
2. *Standardisation* — the language embedding projected on the top ``d_s`` directions and
   whitened: ``z_i = Λ_s^{-1/2}·U_sᵀ·(x_i - μ)`` (unit variance per coordinate); frozen.
3. *ID injection* — trainable ID embeddings ``v_i ∈ R^{d_n}`` live in the ``d_n`` null-space
   coordinates, ``d_s + d_n = h`` (the item width):  ``e_i = [z_i ; v_i]``.

In the item space's basis ``(U_s, U_null)`` the ID part ``[0 ; v_i]`` is orthogonal to the
language subspace spanned by the ``[z_i ; 0]`` — by construction, before and after every
optimizer step (the language block is a buffer, the ID block a parameter of ``d_n``
columns only).  This is the reference code's ``cover=True`` mode; ``alphafuse_cover:
False`` is its default ``cover=False``, where the null coordinates keep the language
embedding's own (whitened) tail components ``z_i^null`` and the ID is added to them,
``e_i = [z_i ; z_i^null + v_i]`` (still orthogonal to the top-``d_s`` semantic subspace).

* ``d_n = alphafuse_null_dim`` (reference default 64 of h = 128; ``~`` = h/2).  If the
  features have fewer than ``h - d_n`` non-zero singular values, every direction beyond
  their rank is null space too, so ``d_n`` grows accordingly.
* Scale: the reference uses unit-variance (whitened) language coordinates and
  ``v_i ~ N(0, 1)``.  RecBole's backbones initialise item tables at std 0.02 and score
  with LayerNorm-ed sequence outputs, where unit-variance items give ~10x larger initial
  logits (SASRec on ml-100k with synthetic features: valid NDCG@10 after 3 epochs
  0.25 at scale 1, 0.38 at 0.3, 0.45 at the backbone's 0.02), so both parts are multiplied by ``alphafuse_scale``, by default the
  std of the backbone's own initial table (``1.0`` = the reference).  Row 0 (padding) is
  zero; BERT4Rec's mask token is a trainable row of the full width.
* Inference: the fused table is computed once and cached in eval mode (no extra cost).
"""
from __future__ import annotations

import torch
from torch import nn

from recbole_genair.model.baselines.common import BaselineMixin, define_models, principal_components
from recbole_genair.model.layers import CachedTable


class NullSpaceItemEmbedding(CachedTable):
    """``e_i = [z_i ; v_i]``: frozen whitened language coordinates + ID in the null space."""

    def __init__(self, features: torch.Tensor, width: int, n_extra: int = 0, null_dim: int | None = None,
                 cover: bool = True, scale: float = 1.0):
        super().__init__()
        null_dim = width // 2 if null_dim is None else int(null_dim)
        if not 0 < null_dim <= width:
            raise ValueError(f"alphafuse_null_dim must lie in [1, {width}], got {null_dim}")
        n_items = features.shape[0]
        pcs = principal_components(features, width)
        self.semantic_dim = min(width - null_dim, pcs.k)
        self.null_dim = width - self.semantic_dim
        language = torch.zeros(n_items, width)
        kept = pcs.k if not cover else self.semantic_dim
        language[1:, :kept] = scale * pcs.coordinates(features[1:], whiten=True)[:, :kept]
        self.register_buffer("language", language)  # [z_i ; 0] (cover) or [z_i ; z_i^null]
        self.id_embedding = nn.Parameter(torch.randn(n_items, self.null_dim) * scale)  # v_i
        self.extra = nn.Parameter(torch.randn(n_extra, width) * scale) if n_extra else None
        row_mask = torch.ones(n_items, 1)
        row_mask[0] = 0.0
        self.register_buffer("row_mask", row_mask, persistent=False)
        self.num_items, self.num_embeddings, self.embedding_dim = n_items, n_items + n_extra, width

    def id_component(self) -> torch.Tensor:
        """The trainable part in item space, ``[0 ; v_i]`` (``[num_items, width]``)."""
        zeros = self.id_embedding.new_zeros(self.num_items, self.semantic_dim)
        return torch.cat([zeros, self.id_embedding], dim=1) * self.row_mask

    def compute_table(self) -> torch.Tensor:
        table = self.language + self.id_component()
        if self.extra is not None:
            table = torch.cat([table, self.extra], dim=0)
        return table


class AlphaFuseMixin(BaselineMixin):
    """AlphaFuse: frozen whitened language coordinates + ID embeddings in their null space."""

    method = "alphafuse"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        original = self.item_embedding
        null_dim = config["alphafuse_null_dim"]
        scale = config["alphafuse_scale"]
        if scale is None:  # the backbone's own initial scale
            scale = original.weight[1:self.n_items].detach().std()
        self.item_embedding = NullSpaceItemEmbedding(
            self.llm_features(config, dataset), original.embedding_dim,
            n_extra=original.num_embeddings - self.n_items,
            null_dim=None if null_dim is None else int(null_dim),
            cover=bool(config["alphafuse_cover"]), scale=float(scale))


MODELS = define_models(AlphaFuseMixin, "AlphaFuse", __name__)
AlphaFuseSASRec, AlphaFuseGRU4Rec, AlphaFuseBERT4Rec = MODELS["SASRec"], MODELS["GRU4Rec"], MODELS["BERT4Rec"]
build = MODELS.build
