"""Item co-occurrence in users' training sequences (GenAIR paper §3.2, Eq. 10-11).

The behavioral-calibration loss (Eq. 9-15, :mod:`recbole_genair.model.calibration`) spares
item pairs that users actually consume together.  Its pair weights come from

* Eq. 10 — ``C(i, j)``: the number of users whose *training* sequence holds both ``i`` and
  ``j`` (``i != j``).  With the binary user×item matrix ``X`` (1 if the user interacted with
  the item at least once in training), ``C = XᵀX`` with the diagonal removed.  A user's
  training sequence is their time-ordered sequence minus what RecBole's leave-one-out split
  holds out (:func:`held_out`): the last interaction is the test target and the second-last
  the validation target (``holdout`` = 2), so neither may leak into the weights; users with
  fewer than 4 interactions keep more in training, as RecBole does.
* Eq. 11 — ``S(i, j) = log(1 + C(i, j)) / log(1 + C_max)`` in ``[0, 1]``; pairs that never
  co-occur have ``S = 0`` (weight ``exp(-γ·0) = 1``, Eq. 12).

:func:`cooccurrence_counts` is fully vectorised (value sorts, run-length counts or a sparse
product; no Python loop over users or pairs); :func:`naive_cooccurrence_counts` is the plain
double loop it is tested and benchmarked against.  :func:`save_cooccurrence` / :func:`load_cooccurrence` keep the counts keyed by
item token, so a file written for one id map can be re-aligned to another.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import scipy.sparse as sp

__all__ = [
    "held_out", "cooccurrence_counts", "naive_cooccurrence_counts", "normalized_scores",
    "save_cooccurrence", "load_cooccurrence", "training_item_counts",
]

_FORMAT_VERSION = 1


def _check_inputs(user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray,
                  n_items: int, holdout: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    users = np.asarray(user_ids).reshape(-1)
    items = np.asarray(item_ids).reshape(-1)
    times = np.asarray(timestamps).reshape(-1)
    if not (len(users) == len(items) == len(times)):
        raise ValueError(f"user_ids, item_ids and timestamps differ in length: "
                         f"{len(users)}, {len(items)}, {len(times)}")
    if holdout < 0:
        raise ValueError(f"holdout must be >= 0, got {holdout}")
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    if len(items):
        if not np.issubdtype(items.dtype, np.integer):
            if not np.all(np.equal(np.mod(items, 1), 0)):
                raise ValueError("item_ids must be integer-valued")
        items = items.astype(np.int64)
        lo, hi = int(items.min()), int(items.max())
        if lo < 0 or hi >= n_items:
            raise ValueError(f"item ids must lie in [0, {n_items}), got range [{lo}, {hi}]")
    else:
        items = items.astype(np.int64)
    return users, items, times


# Bits available for the packed (user rank, time rank, row) sort key of int64.
PACKED_KEY_BITS = 62


def _dense_rank(values: np.ndarray) -> tuple[np.ndarray, int]:
    """``(rank, n_distinct)``: 0-based dense rank of each value (equal values, equal rank)."""
    if np.issubdtype(values.dtype, np.integer):
        low, high = int(values.min()), int(values.max())
        if high - low <= 4 * len(values) + 1024:        # a lookup table beats sorting
            present = np.zeros(high - low + 1, dtype=bool)
            present[values - low] = True
            table = np.cumsum(present, dtype=np.int64) - 1
            return table[values - low], int(table[-1]) + 1
    order = np.argsort(values)
    ordered = values[order]
    new = np.empty(len(values), dtype=bool)
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.cumsum(new) - 1
    return rank, int(new.sum())


def _stable_user_time_order(users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Row order by (user, time), stable (ties keep input order).

    Users and times are replaced by their dense ranks and packed with the row index into one
    int64 key, whose plain value sort (SIMD) is about 3x faster than ``np.lexsort``; when
    the key would not fit in 63 bits ``np.lexsort`` (stable) is used instead.
    """
    n = len(users)
    user_rank, n_users = _dense_rank(users)
    time_rank, n_times = _dense_rank(times)
    index_bits = max(1, int(n - 1).bit_length())
    if int(n_users * n_times).bit_length() + index_bits > PACKED_KEY_BITS:
        return np.lexsort((times, users))
    key = ((user_rank * n_times + time_rank) << index_bits) | np.arange(n, dtype=np.int64)
    key.sort()
    return key & ((1 << index_bits) - 1)


def held_out(n_interactions, holdout: int):
    """How many of a user's last interactions RecBole's sequential leave-one-out split keeps
    out of training (an int, or an array for an array of sequence lengths).

    A user with ``n`` interactions gives ``n - 1`` training rows (targets 2..n); RecBole's
    ``_split_index_by_leave_one_out`` sends ``min(holdout, rows - 1)`` of them to test (and
    valid), so ``min(holdout, n - 2)`` items never enter training: a user with 3 interactions
    has a test item but no validation item, one with 2 has neither.  A user with one
    interaction has no training row at all.  ``holdout=0``: the whole sequence.
    """
    n = np.asarray(n_interactions)
    held = np.where(n < 2, n, np.minimum(holdout, n - 2)) if holdout else np.zeros_like(n)
    return held if held.ndim else int(held)


def _training_mask(users: np.ndarray, times: np.ndarray, holdout: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, user_code)``: input rows of the training sequences, in (user, time) order.

    The order is stable (ties in time keep input order); each user's last
    :func:`held_out` rows are dropped.  ``user_code`` is a dense 0.. user index for each
    returned row.
    """
    n = len(users)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    same_user = users[1:] == users[:-1]
    presorted = bool(np.all((users[1:] > users[:-1]) | (same_user & (times[1:] >= times[:-1]))))
    if presorted:                                   # RecBole's inter_feat usually is
        order = np.arange(n)
    else:
        order = _stable_user_time_order(users, times)
        users = users[order]
        same_user = users[1:] == users[:-1]
    new_run = np.r_[True, ~same_user]
    code = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], n]
    # Rows whose distance to the end of their user's run is <= the user's held-out count are held out.
    runs = ends - starts
    keep = (np.repeat(ends, runs) - np.arange(n)) > np.repeat(held_out(runs, holdout), runs)
    return order[keep], code[keep]


def _user_item_matrix(rows: np.ndarray, user_code: np.ndarray, items: np.ndarray,
                      n_items: int) -> sp.csr_matrix:
    """Binary user×item CSR ``X`` (canonical: each row's items sorted, no duplicates)."""
    n_users = int(user_code[-1]) + 1 if len(user_code) else 0
    key = user_code * np.int64(n_items) + items[rows]
    key.sort()
    if len(key):
        keep = np.empty(len(key), dtype=bool)
        keep[0] = True
        np.not_equal(key[1:], key[:-1], out=keep[1:])
        key = key[keep]                             # a user's repeated item counts once
    user = key // n_items
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=n_users), out=indptr[1:])
    return sp.csr_matrix((np.ones(len(key), dtype=np.int32), (key - user * n_items).astype(np.int32), indptr),
                         shape=(n_users, n_items))


def _counts_by_pairs(x: sp.csr_matrix, n_items: int) -> sp.csr_matrix:
    """``C`` by enumerating each user's item pairs ``i < j``, one sort, run-length counts.

    ``x`` must be canonical (sorted rows).  Every stored item of a user is paired with the
    user's later (larger) items: the key of entry ``k`` repeats ``later[k]`` times and
    ``second`` walks the rest of its row.  The keys ``i·N + j`` (int32 while ``N² < 2³¹``)
    are sorted (SIMD value sort), counted by run length into the strict upper triangle,
    and mirrored.
    """
    key_type = np.int32 if n_items * n_items < 2 ** 31 else np.int64
    index_type = np.int32 if x.nnz < 2 ** 31 else np.int64
    lengths = np.diff(x.indptr)
    entry = np.arange(x.nnz, dtype=index_type)
    later = np.repeat(x.indptr[1:].astype(index_type), lengths) - entry - 1
    first_later = np.cumsum(later, dtype=np.int64) - later   # where each entry's pairs start
    n_pairs = int(first_later[-1] + later[-1]) if x.nnz else 0
    if n_pairs >= 2 ** 31:
        index_type = np.int64
    second = np.arange(n_pairs, dtype=index_type)
    second += np.repeat((entry + 1 - first_later).astype(index_type), later)
    item = x.indices.astype(key_type)
    keys = np.repeat(item * key_type(n_items), later)
    keys += item[second]
    del second
    keys.sort()
    if n_pairs:
        new = np.empty(n_pairs, dtype=bool)
        new[0] = True
        np.not_equal(keys[1:], keys[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        counts = np.diff(np.append(starts, n_pairs)).astype(np.int32)
        keys = keys[starts]
    else:
        counts = np.zeros(0, dtype=np.int32)
    row_start = np.arange(n_items + 1, dtype=np.int64) * n_items
    indptr = np.searchsorted(keys, row_start)
    cols = (keys - np.repeat(row_start[:-1].astype(key_type), np.diff(indptr))).astype(np.int32)
    upper = sp.csr_matrix((counts, cols, indptr), shape=(n_items, n_items))
    return (upper + upper.T.tocsr()).tocsr()        # both canonical: the sum is canonical


def _counts_by_product(x: sp.csr_matrix) -> sp.csr_matrix:
    """``C = XᵀX`` without its diagonal, by a sparse product (memory bounded by the output).

    The product leaves indices unsorted; for a symmetric matrix the CSR of ``Cᵀ`` is ``C``
    with sorted indices, and the transposition is a linear-time counting sort (3x faster
    than ``sort_indices``).  ``setdiag(0)`` is avoided: on CSR with unsorted indices scipy
    1.13 leaves some diagonal entries in place.
    """
    m = sp.csr_matrix(x.T.tocsr() @ x)
    row = np.repeat(np.arange(m.shape[0], dtype=m.indices.dtype), np.diff(m.indptr))
    m.data[m.indices == row] = 0
    m.eliminate_zeros()
    out = m.T.tocsr()
    out.has_sorted_indices = True                   # guaranteed by the csc -> csr conversion
    return out


# The pair enumeration is used while the (user, i < j) pairs are at most this many (their
# keys and temporaries take ~20 bytes each) and at most a quarter of the N² item pairs;
# otherwise the sparse product.  Measured (bench/bench_cooccurrence.py): Amazon Beauty,
# 1.2M pairs over 12k items, enumeration 1.6x faster; ml-100k, 9.9M pairs over 1.7k items
# (each pair seen ~10 times), product 2.6x faster.
PAIR_ENUMERATION_LIMIT = 30_000_000


def counting_algorithm(n_pairs: int, n_items: int) -> str:
    """``"pairs"`` (enumeration) or ``"product"`` (``XᵀX``) for ``n_pairs`` user pairs ``i < j``."""
    return "pairs" if n_pairs <= min(PAIR_ENUMERATION_LIMIT, n_items * n_items // 4) else "product"


def cooccurrence_counts(user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray,
                        n_items: int, holdout: int = 2) -> sp.csr_matrix:
    """``C`` of Eq. 10: users whose training sequence contains both items, ``n_items × n_items``.

    Each user's interactions are sorted by ``timestamps`` (stable: ties keep input order)
    and the last :func:`held_out` are dropped (the leave-one-out valid and test targets).  An item
    seen several times by one user counts once.  Returns a symmetric ``int32`` CSR matrix
    with a zero (structurally empty) diagonal and sorted indices.

    Vectorised, no Python loop over users or pairs: one stable sort (skipped when the rows
    already are in (user, time) order), the binary user×item matrix ``X``, then either the
    enumeration of each user's pairs with one value sort (sparse data such as Amazon) or the
    sparse product ``XᵀX`` (many or long sequences; see ``PAIR_ENUMERATION_LIMIT``).
    """
    users, items, times = _check_inputs(user_ids, item_ids, timestamps, n_items, holdout)
    rows, user_code = _training_mask(users, times, holdout)
    x = _user_item_matrix(rows, user_code, items, n_items)
    lengths = np.diff(x.indptr).astype(np.int64)
    n_pairs = int((lengths * (lengths - 1) // 2).sum())
    if counting_algorithm(n_pairs, n_items) == "pairs":
        counts = _counts_by_pairs(x, n_items)
    else:
        counts = _counts_by_product(x)
    return counts.astype(np.int32, copy=False)


def training_item_counts(user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray,
                         n_items: int, holdout: int = 2) -> np.ndarray:
    """Item popularity in the training sequences: interactions per item id, ``[n_items]`` int64.

    The same training part as :func:`cooccurrence_counts` (each user's last :func:`held_out`
    interactions dropped), so popularity groups never see the valid or test targets; a
    repeated interaction counts each time.
    """
    users, items, times = _check_inputs(user_ids, item_ids, timestamps, n_items, holdout)
    rows, _ = _training_mask(users, times, holdout)
    return np.bincount(items[rows], minlength=n_items).astype(np.int64)


def naive_cooccurrence_counts(user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray,
                              n_items: int, holdout: int = 2) -> sp.csr_matrix:
    """Reference for :func:`cooccurrence_counts`: a plain Python double loop (tests, benchmarks)."""
    users, items, times = _check_inputs(user_ids, item_ids, timestamps, n_items, holdout)
    per_user: dict = {}
    for row, (user, item, time) in enumerate(zip(users.tolist(), items.tolist(), times.tolist())):
        per_user.setdefault(user, []).append((time, row, item))
    pairs: dict[tuple[int, int], int] = {}
    for events in per_user.values():
        events.sort()                               # by time, then input row: stable
        m = len(events)                             # held_out, written out: no numpy per user
        kept = events[:m - ((m if m < 2 else min(holdout, m - 2)) if holdout else 0)]
        distinct = sorted({item for _, _, item in kept})
        for i, j in combinations(distinct, 2):
            pairs[(i, j)] = pairs.get((i, j), 0) + 1
    if not pairs:
        return sp.csr_matrix((n_items, n_items), dtype=np.int32)
    keys = np.array(list(pairs.keys()), dtype=np.int64)
    vals = np.array(list(pairs.values()), dtype=np.int32)
    upper = sp.coo_matrix((vals, (keys[:, 0], keys[:, 1])), shape=(n_items, n_items))
    counts = (upper + upper.T).tocsr()
    counts.sort_indices()
    return counts.astype(np.int32)


def normalized_scores(counts: sp.spmatrix) -> sp.csr_matrix:
    """``S`` of Eq. 11: ``log1p(C) / log1p(C_max)`` on the stored pairs, ``float32``.

    All-zero counts give an all-zero ``S`` (every weight is then ``exp(0) = 1``).  Explicit
    zeros and the diagonal are dropped, so the stored pairs are exactly those with ``S > 0``.
    """
    coo = sp.coo_matrix(counts)
    if coo.shape[0] != coo.shape[1]:
        raise ValueError(f"co-occurrence counts must be square, got shape {coo.shape}")
    c = sp.csr_matrix((coo.data.astype(np.float64), (coo.row, coo.col)), shape=coo.shape)
    c.sum_duplicates()                              # canonical (also: no setdiag on unsorted CSR)
    rows = np.repeat(np.arange(c.shape[0]), np.diff(c.indptr))
    c.data[rows == c.indices] = 0.0
    c.eliminate_zeros()
    if c.nnz and (c.data < 0).any():
        raise ValueError("co-occurrence counts must be non-negative")
    c_max = float(c.data.max()) if c.nnz else 0.0
    if c_max <= 0.0:
        return sp.csr_matrix(c.shape, dtype=np.float32)
    c.data = np.log1p(c.data) / np.log1p(c_max)
    return c.astype(np.float32)


def save_cooccurrence(path: str | Path, counts: sp.spmatrix, item_tokens: Sequence[str] | np.ndarray) -> Path:
    """Write the counts as a compact ``.npz`` keyed by item token.

    Only the upper triangle is stored (``row < col``, ``int32``) together with the token of
    every row/column, so :func:`load_cooccurrence` can re-align the pairs to another id map.
    """
    tokens = np.asarray(item_tokens, dtype=str)
    c = sp.coo_matrix(counts)
    if c.shape[0] != c.shape[1] or c.shape[0] != len(tokens):
        raise ValueError(f"counts of shape {c.shape} do not match {len(tokens)} item tokens")
    upper = c.row < c.col
    row, col, val = c.row[upper], c.col[upper], c.data[upper]
    if len(val) and val.max() > np.iinfo(np.int32).max:
        raise ValueError("counts exceed int32")
    order = np.lexsort((col, row))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:                    # a file handle: np.savez adds no suffix
        np.savez_compressed(fh, version=np.int64(_FORMAT_VERSION), tokens=tokens,
                            row=row[order].astype(np.int32), col=col[order].astype(np.int32),
                            count=val[order].astype(np.int32))
    return path


def load_cooccurrence(path: str | Path, token_to_id: Mapping[str, int], n_items: int | None = None) -> sp.csr_matrix:
    """Counts from :func:`save_cooccurrence`, re-aligned to ``token_to_id`` (symmetric CSR, int32).

    Pairs involving a token unknown to ``token_to_id`` are dropped.  The shape is
    ``n_items`` (default: ``max(token_to_id.values()) + 1``).
    """
    with np.load(Path(path), allow_pickle=False) as data:
        version = int(data["version"]) if "version" in data.files else _FORMAT_VERSION
        if version != _FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported co-occurrence file version {version}")
        tokens, row, col, val = data["tokens"], data["row"], data["col"], data["count"]
    if n_items is None:
        n_items = max(token_to_id.values()) + 1 if len(token_to_id) else 0
    new_id = np.array([token_to_id.get(str(t), -1) for t in tokens.tolist()], dtype=np.int64)
    if len(new_id) and new_id.max() >= n_items:
        raise ValueError(f"token_to_id maps to ids >= n_items={n_items}")
    r, c = new_id[row.astype(np.int64)], new_id[col.astype(np.int64)]
    keep = (r >= 0) & (c >= 0) & (r != c)
    r, c, v = r[keep], c[keep], val[keep].astype(np.int32)
    upper = sp.coo_matrix((v, (r, c)), shape=(n_items, n_items))
    counts = (upper + upper.T).tocsr()
    counts.sort_indices()
    return counts.astype(np.int32)
