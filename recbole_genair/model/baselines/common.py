"""What the five language-model baselines share (``--method=llminit|rlmrec|alphafuse|llmesr|llmemb``).

Every baseline reads the same LLM item embeddings GenAIR's prefill side produces — the
"static encoding of fixed attributes", ``dataset.item_features["prefill"]`` of
:class:`~recbole_genair.data.dataset.ArchetypeDataset` (``genair_features: [prefill]`` in
each method's YAML) — so only the method differs.  Like :mod:`recbole_genair.model.genair`,
each baseline is a mixin placed before RecBole's SASRec, GRU4Rec or BERT4Rec in the MRO, so
the backbone's own ``forward``/``calculate_loss``/``predict``/``full_sort_predict`` run as is:

* :class:`BaselineMixin` — :class:`~recbole_genair.model.mixin.FeatureModelMixin` (shared
  with GenAIR): the data set class, the LLM feature table, the batch's target items, and
  ``calculate_loss = backbone loss + auxiliary_loss`` within one step of the item table;
* :func:`principal_components` / :func:`pca_item_table` — PCA of the LLM embeddings
  (LLMInit's initial table, LLM-ESR's collaborative view, AlphaFuse's semantic space);
* :func:`adapted_llm_table` — frozen LLM embeddings through the two-linear-layer adapter of
  the LLM-ESR / LLMEmb reference code, as a drop-in ``nn.Embedding``;
* :func:`define_models` — the static ``<Prefix>SASRec`` / ``GRU4Rec`` / ``BERT4Rec`` classes
  of a mixin and the registry's ``build`` hook.

Row 0 (RecBole's padding id) of every item table is the zero vector; BERT4Rec's mask token
(the row after the items) stays an ordinary trainable row without an LLM embedding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from recbole.model.sequential_recommender import BERT4Rec, GRU4Rec, SASRec
from torch import nn

from recbole_genair.model.layers import ArchetypeItemEmbedding
from recbole_genair.model.mixin import FeatureModelMixin

BACKBONE_CLASSES = (SASRec, GRU4Rec, BERT4Rec)


@dataclass(frozen=True)
class PrincipalComponents:
    """PCA of the item rows (row 0, padding, excluded): ``X - mean = U·diag(S)·Vᵀ``."""

    mean: torch.Tensor        # [d]
    directions: torch.Tensor  # [d, k], orthonormal columns V_k, by decreasing singular value
    singular: torch.Tensor    # [k], S_k
    n_rows: int

    @property
    def k(self) -> int:
        return self.directions.shape[1]

    def coordinates(self, features: torch.Tensor, whiten: bool = False) -> torch.Tensor:
        """``(x - mean)·V_k``; whitened, each coordinate has unit variance over the items."""
        coords = (features - self.mean) @ self.directions
        if whiten:
            std = self.singular / max(self.n_rows - 1, 1) ** 0.5
            coords = coords / std.clamp_min(1e-12)
        return coords


def principal_components(features: torch.Tensor, k: int) -> PrincipalComponents:
    """The top ``min(k, numerical rank)`` principal directions of ``features[1:]``.

    Signs are fixed (largest loading of each direction positive) so the result does not
    depend on the SVD routine.
    """
    rows = features[1:].double()
    mean = rows.mean(dim=0)
    _, s, vh = torch.linalg.svd(rows - mean, full_matrices=False)
    rank = int((s > s[0] * 1e-6).sum()) if len(s) and s[0] > 0 else 0
    v = vh[:min(k, rank)].T
    if v.numel():
        v = v * torch.sign(v.gather(0, v.abs().argmax(dim=0, keepdim=True)))
    return PrincipalComponents(mean.float(), v.float(), s[:v.shape[1]].float(), rows.shape[0])


PCA_SCALES = ("raw", "init")  # besides a number: see pca_item_table


def pca_scale(value, key: str):
    """A ``*_std`` setting of a PCA-initialised table: ``raw``, ``init`` or a positive number."""
    if isinstance(value, str) and value in PCA_SCALES:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise ValueError(f"{key} must be raw (the reference's unscaled PCA coordinates), init (the "
                     f"backbone's initial std) or a positive number, got {value!r}")


def pca_item_table(features: torch.Tensor, reference: torch.Tensor, scale="raw") -> torch.Tensor:
    """An item table initialised from the LLM embeddings by PCA (LLMInit; LLM-ESR's ID view).

    ``reference`` is the backbone's freshly initialised table ``[rows, width]``.  Items
    ``1..n-1`` get their top-``k`` principal coordinates (``k = min(width, rank)``) in the
    first ``k`` columns: ``scale="raw"`` as they are (the reference codes use sklearn's
    ``PCA.fit_transform`` output unscaled), ``"init"`` rescaled to the standard deviation of
    ``reference`` (the backbone's initial logit scale), a number rescaled to that standard
    deviation.  If the features have fewer than ``width`` components, the remaining columns
    keep the reference's random values.  Row 0 is zero; rows after the items (BERT4Rec's
    mask token) keep the reference.
    """
    n_items, width = features.shape[0], reference.shape[1]
    pcs = principal_components(features, width)
    table = reference.detach().clone()
    table[0] = 0.0
    if pcs.k == 0:  # constant features carry nothing to initialise from
        return table
    coords = pcs.coordinates(features[1:])
    if scale != "raw":
        target = float(reference[1:n_items].std()) if scale == "init" else float(scale)
        coords = coords * (target / max(float(coords.std()), 1e-12))
    table[1:n_items, :pcs.k] = coords.to(table.dtype)
    return table


def llm_adapter(in_dim: int, out_dim: int) -> nn.Sequential:
    """The adapter of the LLM-ESR / LLMEmb reference code: ``Linear(d, d/2) → Linear(d/2, h)``.

    The hidden width is ``max(d/2, h)``: our LLM embeddings are already PCA-reduced, and a
    bottleneck narrower than the item width would cap the rank of the item table.
    """
    hidden = max(in_dim // 2, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Linear(hidden, out_dim))


def adapted_llm_table(features: torch.Tensor, original: nn.Embedding) -> ArchetypeItemEmbedding:
    """Frozen LLM embeddings → trainable :func:`llm_adapter`, shaped like ``original``.

    Built on :class:`ArchetypeItemEmbedding` (row 0 zero, BERT4Rec's mask token a trainable
    extra row, one projection per training step, cached in eval mode).
    """
    table = ArchetypeItemEmbedding(features, original.embedding_dim,
                                   n_extra=original.num_embeddings - features.shape[0], layers=1)
    table.projector = llm_adapter(features.shape[1], original.embedding_dim)
    return table


class BaselineMixin(FeatureModelMixin):
    """Common part of the baseline mixins; put the mixin before the RecBole backbone in the MRO."""


def recbole_backbone(model_class: type) -> type:
    """The RecBole backbone class (SASRec, GRU4Rec or BERT4Rec) a plugin class derives from."""
    for klass in model_class.__mro__:
        if klass in BACKBONE_CLASSES:
            return klass
    raise TypeError(f"{model_class.__name__} derives from none of {[c.__name__ for c in BACKBONE_CLASSES]}")


class ModelFamily(dict):
    """``{backbone name: plugin class}`` of one method."""

    def build(self, backbone_class: type) -> type:
        """Registry hook: the method's class for a RecBole backbone class."""
        return self[backbone_class.__name__]


def define_models(mixin: type, prefix: str, module: str) -> ModelFamily:
    """``<prefix>SASRec``, ``<prefix>GRU4Rec``, ``<prefix>BERT4Rec`` = ``(mixin, backbone)``.

    The classes are bound to module-level names by the caller (``module`` is its
    ``__name__``), so pickled checkpoints find them as they find ``GenAIRSASRec``.
    """
    summary = (mixin.__doc__ or mixin.__name__).strip().splitlines()[0]
    family = ModelFamily()
    for backbone in BACKBONE_CLASSES:
        name = f"{prefix}{backbone.__name__}"
        family[backbone.__name__] = type(name, (mixin, backbone), {
            "backbone": backbone.__name__, "__module__": module, "__qualname__": name,
            "__doc__": f"{summary} — on RecBole's {backbone.__name__}."})
    return family
