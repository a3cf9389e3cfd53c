"""``ArchetypeItemEmbedding``: the GenAIR item table ``p_θ(E_i)`` (paper §3.1.2, Eq. 8).

Frozen archetype features ``E`` (PCA-reduced prefill and decoding embeddings, concatenated)
pass through a trainable MLP projector to the backbone's item width.  The module is a
drop-in replacement for a backbone's ``nn.Embedding``: calling it looks rows up and
``.weight`` is the whole projected table, so RecBole's SASRec, GRU4Rec and BERT4Rec run
their own ``forward``/``calculate_loss``/``predict``/``full_sort_predict`` unchanged.

* Row 0 (padding) is always the zero vector; ``n_extra`` trainable rows follow the items
  (BERT4Rec's mask token).
* ``unit_rows`` (not in the paper; ``item_table_norm: l2``): each projected item row is
  scaled to length 1, so an item's score can no longer grow with its row's norm.
* ``id_residual`` (not in the paper; ``item_id_residual: true``): a trainable per-item table,
  zero at the start, is added to each projected item row, so every item also gets free
  parameters of its own, as in an ID table (the diagnostic for why LLMInit's free table beats
  GenAIR's purely feature-derived one; bench/RESULTS.md).
* ``autocast_dtype`` (not in the paper; ``projector_dtype: bfloat16``): the projector's Linear
  maps run under ``torch.autocast`` in that dtype, everything between them (LayerNorm, GELU)
  and the output in float32 — a cheaper whole-table projection per CE step on hardware with
  native bf16.
* Training: within :meth:`step` the table is projected once and shared by every use in
  that step (sequence inputs and output scoring).  A *sparse* step (sampled ranking losses
  such as BPR, which score only the batch's positives and negatives) projects only the rows
  each lookup asks for; the whole table is still projected, once, if ``.weight`` is read.
* Inference costs nothing extra (paper §3.3.2): in eval mode the projected table is cached
  and reused until the projector's parameters change (optimizer step, ``load_state_dict``)
  or the module goes back to training mode.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook


def make_projector(in_dim: int, out_dim: int, layers: int = 2, width: Optional[int] = None,
                   dropout: float = 0.0) -> nn.Sequential:
    """Linear → LayerNorm → GELU → (Dropout) → ... → Linear, ``layers`` linear maps in all."""
    if layers < 1:
        raise ValueError(f"projector needs at least one layer, got {layers}")
    width = width or 2 * out_dim
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, width), nn.LayerNorm(width), nn.GELU()]
        if dropout:
            mods.append(nn.Dropout(dropout))
        dim = width
    mods.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*mods)


def standardize_columns(rows: torch.Tensor) -> torch.Tensor:
    """Each column centred and divided by its standard deviation over the rows (for PCA
    coordinates: whitening).  A constant column is an error, not a division by zero."""
    std = rows.std(dim=0)
    if bool((std == 0).any()):
        raise ValueError(f"cannot standardize: {int((std == 0).sum())} feature columns are constant over the items")
    return (rows - rows.mean(dim=0)) / std


_TABLES: "weakref.WeakSet[CachedTable]" = weakref.WeakSet()


def _drop_eval_tables(optimizer, args, kwargs) -> None:
    """After any optimizer step: a fused optimizer updates parameters in place without bumping
    their version counters, so a cached eval table could not tell it is stale."""
    for table in list(_TABLES):
        table._eval_table, table._eval_key = None, None


register_optimizer_step_post_hook(_drop_eval_tables)


class CachedTable(nn.Module):
    """An ``nn.Embedding`` look-alike whose table :meth:`compute_table` derives from parameters.

    ``.weight`` is the whole table and calling the module looks rows up; inside
    :meth:`step` the table is computed once and shared (or, in a sparse step, only the rows
    looked up, when the subclass can compute rows); in eval mode without grad it is
    cached until a parameter or buffer changes (any optimizer's step, ``load_state_dict``, an
    in-place edit of a parameter) or the module goes back to training.  An edit through
    ``.data`` bypasses autograd's version counter and is not seen: call ``train()`` after one.
    GenAIR's table and the baselines' tables derive from it.
    """

    num_embeddings: int
    embedding_dim: int

    def __init__(self) -> None:
        super().__init__()
        self._step_table: Optional[torch.Tensor] = None
        self._sparse_step = False
        self._eval_table: Optional[torch.Tensor] = None
        self._eval_key: Optional[tuple] = None
        _TABLES.add(self)

    def compute_table(self) -> torch.Tensor:
        raise NotImplementedError

    def compute_rows(self, ids: torch.Tensor) -> Optional[torch.Tensor]:
        """``compute_table()[ids]`` without the rest of the table; ``None``: not supported."""
        return None

    def _state_key(self) -> tuple:
        return tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))

    @property
    def weight(self) -> torch.Tensor:
        if self._step_table is not None:
            return self._step_table
        if self._sparse_step:  # a lookup needed the whole table: compute it once for the step
            self._step_table = self.compute_table()
            return self._step_table
        if self.training or torch.is_grad_enabled():
            return self.compute_table()
        key = self._state_key()
        if self._eval_table is None or self._eval_key != key:
            self._eval_table, self._eval_key = self.compute_table(), key
        return self._eval_table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self._sparse_step and self._step_table is None:
            rows = self.compute_rows(ids)
            if rows is not None:
                return rows
        return self.weight[ids]

    @contextlib.contextmanager
    def step(self, sparse: bool = False) -> Iterator[Optional[torch.Tensor]]:
        """One training step: the table is computed once and shared inside the block.

        ``sparse``: compute only the rows looked up (yields ``None``); the same values and
        gradients, cheaper when a step touches few of the items.
        """
        self._sparse_step = bool(sparse)
        self._step_table = None if sparse else self.compute_table()
        try:
            yield self._step_table
        finally:
            self._step_table, self._sparse_step = None, False

    def train(self, mode: bool = True):
        self._eval_table, self._eval_key = None, None
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self._eval_table, self._eval_key = None, None
        super()._load_from_state_dict(*args, **kwargs)


class ArchetypeItemEmbedding(CachedTable):
    """Frozen features → MLP projector, used like ``nn.Embedding``."""

    def __init__(self, features: torch.Tensor, embedding_dim: int, n_extra: int = 0, layers: int = 2,
                 width: Optional[int] = None, dropout: float = 0.0, unit_rows: bool = False,
                 autocast_dtype: Optional[torch.dtype] = None, id_residual: bool = False):
        super().__init__()
        if features.dim() != 2:
            raise ValueError(f"features must be [n_items, d], got {tuple(features.shape)}")
        self.num_items = features.shape[0]
        self.embedding_dim = embedding_dim
        self.n_extra = n_extra
        self.register_buffer("features", features.float().clone(), persistent=False)
        # persisted, so a checkpoint refuses to load against different features
        self.register_buffer("feature_fingerprint", self._fingerprint(self.features))
        self.projector = make_projector(features.shape[1], embedding_dim, layers, width, dropout)
        self.unit_rows = bool(unit_rows)
        self.autocast_dtype = autocast_dtype  # e.g. bfloat16: the projector's matmuls in low precision
        self.extra = nn.Parameter(torch.randn(n_extra, embedding_dim) * 0.02) if n_extra else None
        self.residual = nn.Parameter(torch.zeros(self.num_items, embedding_dim)) if id_residual else None
        row_mask = torch.ones(self.num_items, 1)
        row_mask[0] = 0.0
        self.register_buffer("row_mask", row_mask, persistent=False)

    @staticmethod
    def _fingerprint(features: torch.Tensor) -> torch.Tensor:
        f = features.double()
        return torch.tensor([f.shape[0], f.shape[1], f.sum().item(), f.abs().sum().item()], dtype=torch.float64)

    @property
    def num_embeddings(self) -> int:
        return self.num_items + self.n_extra

    def project(self) -> torch.Tensor:
        """The whole table, computed now: ``[num_items + n_extra, embedding_dim]``."""
        table = self._item_rows(None)
        if self.extra is not None:
            table = torch.cat([table, self.extra], dim=0)
        return table

    compute_table = project

    def _item_rows(self, item: Optional[torch.Tensor]) -> torch.Tensor:
        """Rows of items ``item`` (``None``: every item): projected, plus the residual, then
        unit-length if asked (so ``unit_rows`` holds with the residual too); padding row zero."""
        rows = self._project(self.features if item is None else self.features[item])
        if self.residual is not None:
            rows = rows + (self.residual if item is None else self.residual[item])
        if self.unit_rows:
            rows = F.normalize(rows, dim=-1)
        return rows * (self.row_mask if item is None else self.row_mask[item])

    def _project(self, features: torch.Tensor) -> torch.Tensor:
        """The projector's map of ``features`` (in ``autocast_dtype`` where set)."""
        if self.autocast_dtype is None:
            rows = self.projector(features)
        else:
            # Only the Linear maps run in low precision; LayerNorm and GELU stay float32.
            # Under autocast of the whole projector, LayerNorm runs in bf16 and its weight/bias
            # gradients (a sum over every item row) come out 10-18 % off, which measurably hurt
            # training (bench/RESULTS.md, "The projector in bfloat16").
            rows = features
            for module in self.projector:
                if isinstance(module, nn.Linear):
                    with torch.autocast(device_type=rows.device.type, dtype=self.autocast_dtype):
                        rows = module(rows)
                    rows = rows.float()
                else:
                    rows = module(rows)
        return rows

    def compute_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of :meth:`project`, projecting each distinct id once."""
        unique, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
        item = unique.clamp(max=self.num_items - 1)
        rows = self._item_rows(item)
        if self.extra is not None:
            is_extra = (unique >= self.num_items).unsqueeze(-1)
            rows = torch.where(is_extra, self.extra[(unique - self.num_items).clamp(min=0)], rows)
        return rows[inverse].reshape(*ids.shape, self.embedding_dim)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "feature_fingerprint"
        if key in state_dict and not torch.allclose(state_dict[key].double(), self.feature_fingerprint.double(),
                                                    rtol=1e-6, atol=1e-3):
            error_msgs.append(f"{key}: the checkpoint was trained on other archetype features "
                              f"({state_dict[key].tolist()} vs {self.feature_fingerprint.tolist()})")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
