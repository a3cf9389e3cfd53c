"""Behavioral-calibration loss of GenAIR (paper §3.2, Eq. 9-15, Proposition 3.1).

LLM-derived item embeddings put semantically similar items close together even when users
never consume them together.  The calibration loss pushes the projected item embeddings of
the batch's target items apart, sparing pairs that co-occur in users' training sequences:

* Eq. 10-11 (:mod:`recbole_genair.data.cooccurrence`): co-occurrence counts ``C`` and
  normalised scores ``S = log(1+C) / log(1+C_max)`` in ``[0, 1]``;
* Eq. 12 — pair weight ``w(i, j) = exp(-γ·S(i, j))``; never co-occurring pairs get ``w = 1``
  (:class:`PairWeights`);
* Eq. 13-14 — on the L2-normalised projected embeddings ``e`` of the batch's distinct target
  items, ``L_cal = 1/(n(n-1)) Σ_{i≠j} w(i, j)·exp(-t·||e_i − e_j||²)`` (``t = 2``);
* Eq. 15 — ``L = L_rank + α·L_cal`` (added by :class:`recbole_genair.model.genair.GenAIRMixin`).

Proposition 3.1: for symmetric ``w`` and the mean over the ``n(n-1)`` ordered pairs,
``∂L_cal/∂e_i = -(4t / (n(n-1)))·Σ_{j≠i} w_ij·exp(-t||e_i − e_j||²)·(e_i − e_j)``.
:func:`calibration_loss` implements that gradient in closed form (a custom autograd
function, checked against the formula, autograd and ``gradcheck`` in the tests): the
forward pass runs over cache-sized row blocks and keeps one ``n×n`` matrix, the backward
pass is one matrix product, instead of the ~10 ``n×n`` passes autograd would make.

Decisions
---------
* Duplicate target items in a batch are collapsed first (``torch.unique`` of the ids; the
  embedding of the first occurrence is used, all occurrences are the same table row), so
  pairs are between *distinct* items.  Fewer than two distinct items give a loss of exactly
  0 that is still attached to the graph (``backward()`` works, gradients are 0).
* ``||a − b||²`` is computed as ``||a||² + ||b||² − 2a·b`` clamped at 0 (no ``cdist``, no
  ``n×n×d`` difference tensor).  For unit vectors this is ``2 − 2a·b``; keeping the norms
  makes the value and the gradient exactly those of Proposition 3.1 for any input, and
  through ``F.normalize`` the two forms give identical gradients.
* ``variant="released"`` reproduces the authors' released code instead of the paper's
  equation: ``L = 1/(n(n-1)) Σ_{i≠j} −w(i, j)·||e_i − e_j||²`` (no kernel).  Default
  ``variant="kernel"`` (the paper).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["VARIANTS", "PairWeights", "calibration_loss", "CalibrationLoss"]

VARIANTS = ("kernel", "released")
LOOKUP_METHODS = ("auto", "dense", "search", "scan")

# Cost model of the lookups in units of the scan's cost per stored pair (the scan costs
# nnz + (n+1)² units), measured on CPU (bench/bench_calibration.py, lookup table): one
# binary-search step of one query costs SEARCH_STEP_COST, one gathered entry of the dense
# matrix DENSE_ENTRY_COST (random reads from a matrix far larger than the caches).
SEARCH_STEP_COST = 0.5
DENSE_ENTRY_COST = 1.5
DEFAULT_DENSE_LIMIT = 4e7


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown calibration variant {variant!r}; expected one of {VARIANTS}")
    return variant


class PairWeights(nn.Module):
    """Eq. 12: ``w(i, j) = exp(-γ·S(i, j))`` for all pairs of a set of item ids, on device.

    Built once from the sparse score matrix ``S`` (Eq. 11).  ``forward(items)`` returns the
    ``[n, n]`` weight matrix of the given *distinct* internal item ids in one vectorised
    device computation (no Python loop over pairs, no host round trip); pairs absent from
    ``S`` have ``S = 0`` and hence ``w = 1``.  ``S`` is kept, not ``w``, so ``gamma`` (a
    plain attribute) can be changed at any time.

    Lookup methods (``method``):

    * ``"dense"`` — an ``N×N`` score matrix and one gather of the ``n²`` entries: ``O(n²)``,
      kept only while ``N² ≤ dense_limit`` (4e7, i.e. 160 MB of float32, ~6.3k items).
    * ``"search"`` — ``torch.searchsorted`` of the ``n²`` pair keys ``i·N + j`` in the sorted
      keys of the stored pairs: ``O(n² log nnz)``, best for small batches.
    * ``"scan"`` — one pass over all stored pairs with an item→batch-position table and a
      ``scatter_`` into an ``(n+1)×(n+1)`` scratch matrix (row/column ``n`` absorb pairs
      not in the batch): ``O(nnz + n²)``, best for large batches.
    * ``"auto"`` — per call, the cheapest of these by a measured cost model of the batch
      size ``n`` (a shape, so still no host synchronisation); dense only for small catalogs.

    The sparse buffers hold about 20 bytes per stored (ordered) pair.  All buffers are
    registered with ``persistent=False``: they follow ``.to(device)`` but stay out of the
    ``state_dict`` (they are rebuilt from the data set).  Ids in ``forward`` must be
    distinct for ``"scan"`` (``CalibrationLoss`` collapses duplicates); the other methods
    accept repeats.
    """

    def __init__(self, scores: sp.spmatrix, gamma: float = 1.0, method: str = "auto",
                 dense_limit: float = DEFAULT_DENSE_LIMIT) -> None:
        super().__init__()
        if method not in LOOKUP_METHODS:
            raise ValueError(f"unknown lookup method {method!r}; expected one of {LOOKUP_METHODS}")
        s = sp.csr_matrix(scores, dtype=np.float32, copy=True)
        if s.shape[0] != s.shape[1]:
            raise ValueError(f"score matrix must be square, got shape {s.shape}")
        s.sum_duplicates()
        s.eliminate_zeros()
        if s.nnz and not np.all(np.isfinite(s.data)):
            raise ValueError("score matrix has non-finite entries")
        self.n_items = int(s.shape[0])
        self.gamma = float(gamma)
        self.nnz = int(s.nnz)
        self.symmetric = bool((s != s.T).nnz == 0)     # lets the backward pass skip Gᵀ
        self.method = method
        if method == "dense" or (method == "auto" and self.n_items ** 2 <= dense_limit):
            self.register_buffer("dense_scores", torch.from_numpy(s.toarray()), persistent=False)
        if method == "dense":
            return
        # Row-major sorted entries: keys i·N + j (int64), a sentinel key N² (> any query)
        # with value 0 so that searchsorted never runs past the end.
        n = self.n_items
        row = np.repeat(np.arange(n, dtype=np.int64), np.diff(s.indptr))
        col = s.indices.astype(np.int64)
        keys = row * n + col
        order = np.argsort(keys, kind="stable")
        keys = np.append(keys[order], np.int64(n) * n)
        values = np.append(s.data[order], np.float32(0.0))
        self.register_buffer("keys", torch.from_numpy(keys), persistent=False)
        self.register_buffer("values", torch.from_numpy(values), persistent=False)
        self.register_buffer("rows", torch.from_numpy(row[order].astype(np.int32)), persistent=False)
        self.register_buffer("cols", torch.from_numpy(col[order].astype(np.int32)), persistent=False)
        self._log_nnz = math.log2(self.nnz + 2)

    @classmethod
    def from_scores(cls, scores: sp.spmatrix, gamma: float = 1.0, **kwargs) -> "PairWeights":
        """From ``S`` of Eq. 11 (e.g. :func:`~recbole_genair.data.cooccurrence.normalized_scores`)."""
        return cls(scores, gamma=gamma, **kwargs)

    @classmethod
    def from_counts(cls, counts: sp.spmatrix, gamma: float = 1.0, **kwargs) -> "PairWeights":
        """From the co-occurrence counts ``C`` of Eq. 10 (normalised here, Eq. 11)."""
        from recbole_genair.data.cooccurrence import normalized_scores
        return cls(normalized_scores(counts), gamma=gamma, **kwargs)

    def extra_repr(self) -> str:
        return f"n_items={self.n_items}, nnz={self.nnz}, gamma={self.gamma}, method={self.method!r}"

    def choose_method(self, n: int) -> str:
        """The lookup used for a batch of ``n`` ids (``"auto"`` resolved by the cost model)."""
        if self.method != "auto":
            return self.method
        costs = {"search": SEARCH_STEP_COST * n * n * self._log_nnz, "scan": self.nnz + (n + 1) ** 2}
        if hasattr(self, "dense_scores"):
            costs["dense"] = DENSE_ENTRY_COST * n * n
        return min(costs, key=costs.__getitem__)

    def scores(self, items: torch.Tensor, method: str | None = None) -> torch.Tensor:
        """``S(items[a], items[b])`` as a float32 ``[n, n]`` tensor (0 for absent pairs)."""
        if items.dim() != 1:
            raise ValueError(f"items must be 1-D, got shape {tuple(items.shape)}")
        items = items.long()
        n = items.shape[0]
        method = method or self.choose_method(n)
        if method == "dense":
            if not hasattr(self, "dense_scores"):
                raise ValueError("this PairWeights was built without the dense matrix")
            flat = (items.unsqueeze(1) * self.n_items + items.unsqueeze(0)).reshape(-1)
            return self.dense_scores.view(-1).index_select(0, flat).view(n, n)
        if not hasattr(self, "keys"):
            raise ValueError("this PairWeights was built with the dense matrix only")
        if method == "search":
            query = (items.unsqueeze(1) * self.n_items + items.unsqueeze(0)).reshape(-1)
            pos = torch.searchsorted(self.keys, query)
            found = self.keys.index_select(0, pos) == query
            return (self.values.index_select(0, pos) * found).view(n, n)
        if method == "scan":
            m = n + 1
            batch = torch.arange(n, device=items.device)
            row_offset = torch.full((self.n_items,), n * m, dtype=torch.long, device=items.device)
            row_offset.index_copy_(0, items, batch * m)
            col_pos = torch.full((self.n_items,), n, dtype=torch.long, device=items.device)
            col_pos.index_copy_(0, items, batch)
            flat = torch.zeros(m * m, dtype=self.values.dtype, device=items.device)
            index = row_offset.index_select(0, self.rows).add_(col_pos.index_select(0, self.cols))
            flat.scatter_(0, index, self.values[:-1])
            return flat.view(m, m)[:n, :n]
        raise ValueError(f"unknown lookup method {method!r}; expected one of {LOOKUP_METHODS[1:]}")

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """``w = exp(-γ·S)`` for all pairs of ``items`` (``[n]`` distinct ids) → ``[n, n]`` float32."""
        return torch.exp(self.scores(items) * -self.gamma)


# Rows per block in the forward pass: a block of the n×n matrices stays near 1 MB (cache).
_BLOCK_ELEMENTS = 1 << 18


class _CalibrationFunction(torch.autograd.Function):
    """``L_cal`` w.r.t. ``emb`` with the closed-form gradient of Proposition 3.1.

    With ``f_ij = w_ij·exp(-t·d_ij)`` (kernel) or ``f_ij = -w_ij·d_ij`` (released) and
    ``d_ij = ||e_i − e_j||²``: ``∂L/∂e_i = 2/(n(n-1))·Σ_j (G + Gᵀ)_ij (e_i − e_j)`` with
    ``G_ij = ∂f_ij/∂d_ij`` off the diagonal; for the kernel and symmetric ``w`` this is
    ``-(4t/(n(n-1)))·Σ_j w_ij exp(-t d_ij)(e_i − e_j)``.

    The weights come either as ``w`` (``log_space=False``) or as ``log w`` (``log_space=True``,
    then the kernel is the single ``exp(log w − t·d)``).  The forward pass runs over row
    blocks that stay in cache and writes one ``n×n`` matrix ``B`` (``G = coef·B``); the
    backward pass is one product ``B·[E | 1]`` (two if ``w`` is not symmetric).  ``weights``
    get no gradient here (:func:`calibration_loss` falls back to autograd for that).
    """

    @staticmethod
    def forward(ctx, emb: torch.Tensor, weights: torch.Tensor, t: float, kernel: bool,
                log_space: bool, symmetric: bool) -> torch.Tensor:
        n = emb.shape[0]
        sq = (emb * emb).sum(dim=1)
        base = torch.empty(n, n, dtype=emb.dtype, device=emb.device)
        scratch = None if kernel else torch.empty(0, dtype=emb.dtype, device=emb.device)
        total = emb.new_zeros(())
        rows = max(16, _BLOCK_ELEMENTS // n)
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            w = weights[start:stop]
            if kernel:                                   # B = w·exp(-t·d), G = -t·B
                dist = torch.addmm(sq.unsqueeze(0), emb[start:stop], emb.t(), alpha=-2.0, out=base[start:stop])
                dist.add_(sq[start:stop].unsqueeze(1)).clamp_min_(0.0).mul_(-t)
                if log_space:
                    dist.add_(w).exp_()
                else:
                    dist.exp_().mul_(w)
                dist.diagonal(offset=start).zero_()
                total += dist.sum()
            else:                                        # B = w, G = -B; f = -w·d
                block = base[start:stop]
                if log_space:
                    torch.exp(w, out=block)
                else:
                    block.copy_(w)
                block.diagonal(offset=start).zero_()
                scratch = torch.addmm(sq.unsqueeze(0), emb[start:stop], emb.t(), alpha=-2.0,
                                      out=scratch.resize_(stop - start, n))
                scratch.add_(sq[start:stop].unsqueeze(1)).clamp_min_(0.0).mul_(block)
                total -= scratch.sum()
        norm = 1.0 / (n * (n - 1))
        ctx.coef = (-t if kernel else -1.0) * norm
        ctx.symmetric = symmetric
        ctx.save_for_backward(emb, base)
        return total * norm

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        emb, base = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        # Σ_j g_ij (e_i − e_j) = rowsum(g)_i·e_i − (g·E)_i, both from one product g·[E | 1].
        ext = torch.cat([emb, emb.new_ones(emb.shape[0], 1)], dim=1)
        if ctx.symmetric:
            prod = (base @ ext).mul_(2.0)
        else:
            prod = base @ ext
            prod.addmm_(base.t(), ext)
        grad = prod[:, -1:] * emb - prod[:, :-1]
        return grad * (2.0 * ctx.coef * grad_out), None, None, None, None, None


def _autograd_loss(emb: torch.Tensor, weights: torch.Tensor, t: float, kernel: bool) -> torch.Tensor:
    """Plain autograd version (used when ``weights`` need a gradient)."""
    n = emb.shape[0]
    sq = (emb * emb).sum(dim=1)
    dist = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * emb @ emb.t()).clamp_min(0.0)
    off = ~torch.eye(n, dtype=torch.bool, device=emb.device)
    terms = weights * torch.exp(-t * dist) if kernel else -weights * dist
    return (terms * off).sum() / (n * (n - 1))


def _fused_loss(emb: torch.Tensor, weights: torch.Tensor, t: float, variant: str,
                log_space: bool, symmetric: bool) -> torch.Tensor:
    _check_variant(variant)
    if emb.dim() != 2:
        raise ValueError(f"emb must be [n, d], got shape {tuple(emb.shape)}")
    n = emb.shape[0]
    if weights.shape != (n, n):
        raise ValueError(f"weights must be [{n}, {n}], got shape {tuple(weights.shape)}")
    if n < 2:
        return emb[:0].sum() + weights[:0].sum()    # exactly 0, with a graph
    weights = weights.to(dtype=emb.dtype)
    if weights.requires_grad and torch.is_grad_enabled():
        if log_space:
            raise ValueError("log-space weights with a gradient are not supported")
        return _autograd_loss(emb, weights, float(t), variant == "kernel")
    return _CalibrationFunction.apply(emb, weights, float(t), variant == "kernel", log_space, symmetric)


def calibration_loss(emb: torch.Tensor, weights: torch.Tensor, t: float = 2.0,
                     variant: str = "kernel") -> torch.Tensor:
    """Eq. 13-14: ``1/(n(n-1)) Σ_{i≠j} w_ij·exp(-t·||e_i − e_j||²)`` (``variant="kernel"``).

    ``emb`` — ``[n, d]`` embeddings of *distinct* items, already L2-normalised;
    ``weights`` — ``[n, n]`` pair weights (:class:`PairWeights`), the diagonal is ignored.
    ``variant="released"`` gives ``1/(n(n-1)) Σ_{i≠j} −w_ij·||e_i − e_j||²``.  With ``n < 2``
    the loss is 0 and still attached to ``emb``'s graph.  The gradient w.r.t. ``emb`` is the
    closed form of Proposition 3.1 (any, even asymmetric, ``weights``); if ``weights``
    require a gradient the loss is computed with plain autograd instead.
    """
    return _fused_loss(emb, weights, t, variant, log_space=False, symmetric=False)


class CalibrationLoss(nn.Module):
    """``L_cal`` of the batch's target items (Eq. 9-14) from their projected embeddings.

    ``forward(emb, item_ids)``: ``emb`` ``[B, d]`` projected, not yet normalised, embeddings
    of the batch's target items and ``item_ids`` ``[B]`` their internal ids.  Duplicates are
    collapsed (``torch.unique``; first occurrence's row), the rows are L2-normalised, and
    the scores ``S`` of the distinct ids come from ``pair_weights``; the weights
    ``exp(-γ·S)`` are folded into the kernel, ``exp(-γ·S − t·d)`` (one ``exp``), which is
    the same value as ``calibration_loss(e, pair_weights(ids))``.
    """

    def __init__(self, pair_weights: PairWeights, t: float = 2.0, variant: str = "kernel") -> None:
        super().__init__()
        self.pair_weights = pair_weights
        self.t = float(t)
        self.variant = _check_variant(variant)

    def extra_repr(self) -> str:
        return f"t={self.t}, variant={self.variant!r}"

    def forward(self, emb: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        ids = item_ids.reshape(-1)
        if emb.dim() != 2 or emb.shape[0] != ids.shape[0]:
            raise ValueError(f"expected emb [B, d] aligned with item_ids [B]; got {tuple(emb.shape)} "
                             f"and {tuple(item_ids.shape)}")
        unique, inverse = torch.unique(ids, sorted=True, return_inverse=True)
        n = unique.shape[0]
        if n < 2:
            return emb[:0].sum()
        positions = torch.arange(ids.shape[0], device=ids.device)
        first = torch.full((n,), ids.shape[0], dtype=torch.long, device=ids.device)
        first.scatter_reduce_(0, inverse, positions, reduce="amin")
        unit = F.normalize(emb.index_select(0, first), dim=-1)
        pw = self.pair_weights
        log_weights = pw.scores(unique).to(unit.dtype).mul_(-pw.gamma)
        return _fused_loss(unit, log_weights, self.t, self.variant, log_space=True, symmetric=pw.symmetric)
