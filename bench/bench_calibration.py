"""Benchmark: GenAIR calibration loss (paper Eq. 12-14) vs the released code's approach.

The reference re-implements the released ``FastCalibrationLoss``: per batch, a Python double
loop over all ordered item pairs with dict lookups ``cooc.get((i, j))`` to build the weight
matrix, then an ``n×n×d`` difference tensor ``e[:, None, :] - e[None, :, :]`` for the squared
distances, the kernel and the mean.  Ours is :class:`recbole_genair.model.calibration.
CalibrationLoss` (vectorised weight lookup on device, ``||a||²+||b||²-2a·b`` distances and a
closed-form backward).  Both compute the same value (checked) from the real Amazon Beauty
co-occurrence (training sequences, last two items held out), on ``n`` distinct target items
drawn by popularity, ``d = 128``; each timing is forward + backward.  Run from the project
root:

    python bench/bench_calibration.py            # full: n = 128, 512, 1024, 2048
    python bench/bench_calibration.py --quick    # smoke: n = 128, 512, few repeats

Both sides run with ``torch.set_num_threads(1)``, interleaved run by run so that load from
other processes hits both alike; ours is also timed with 2 threads.  A second table times
the weight lookups alone (dense / search / scan) to support the automatic choice.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from bench_cooccurrence import load_user_sequences
from recbole_genair.data.cooccurrence import cooccurrence_counts, normalized_scores
from recbole_genair.model.calibration import CalibrationLoss, PairWeights

GAMMA = 1.0
T = 2.0
DIM = 128


class ReferenceCalibrationLoss:
    """The released code's approach: dict-based weights in Python, ``n×n×d`` differences."""

    def __init__(self, scores: sp.spmatrix, gamma: float = GAMMA, t: float = T) -> None:
        coo = sp.coo_matrix(scores)
        self.cooc = {(int(i), int(j)): float(s) for i, j, s in zip(coo.row, coo.col, coo.data)}
        self.gamma, self.t = gamma, t

    def __call__(self, emb: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        unique, inverse = torch.unique(item_ids, return_inverse=True)
        first = torch.full((len(unique),), len(item_ids), dtype=torch.long)
        first.scatter_reduce_(0, inverse, torch.arange(len(item_ids)), reduce="amin")
        e = F.normalize(emb[first], dim=-1)
        ids = unique.tolist()
        n = len(ids)
        weights = [[0.0] * n for _ in range(n)]
        for a, i in enumerate(ids):
            row = weights[a]
            for b, j in enumerate(ids):
                if a != b:
                    row[b] = math.exp(-self.gamma * self.cooc.get((i, j), 0.0))
        w = torch.tensor(weights, dtype=e.dtype)
        diff = e[:, None, :] - e[None, :, :]
        dist = (diff ** 2).sum(dim=-1)
        kernel = torch.exp(-self.t * dist)
        mask = ~torch.eye(n, dtype=torch.bool)
        return (w * kernel)[mask].mean()


def fwd_bwd(loss_fn: Callable, emb: torch.Tensor, ids: torch.Tensor) -> tuple[float, float]:
    """Seconds for one forward + backward, and the loss value."""
    leaf = emb.detach().requires_grad_()
    start = time.perf_counter()
    loss = loss_fn(leaf, ids)
    loss.backward()
    return time.perf_counter() - start, loss.item()


def sample_items(n: int, popularity: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """``n`` distinct item ids drawn without replacement in proportion to popularity."""
    p = popularity / popularity.sum()
    return torch.from_numpy(rng.choice(len(p), size=n, replace=False, p=p)).long()


def loss_table(scores: sp.csr_matrix, popularity: np.ndarray, sizes: list[int], quick: bool) -> None:
    ref = ReferenceCalibrationLoss(scores)
    weights = PairWeights.from_scores(scores, gamma=GAMMA)
    ours = CalibrationLoss(weights, t=T, variant="kernel")
    rng = np.random.default_rng(0)
    print(f"\nLoss forward+backward, d={DIM}, gamma={GAMMA}, t={T}; median of runs "
          f"(ref and ours interleaved); lookup: {weights}")
    print(f"{'n':>5} {'lookup':>7} {'ref s':>8} {'ours 1t s':>10} {'ratio':>8} {'ours 2t s':>10} "
          f"{'ratio':>8} {'runs':>9}  |loss diff|")
    for n in sizes:
        ids = sample_items(n, popularity, rng)
        emb = torch.randn(n, DIM)
        ref_runs = 1 if (quick or n >= 2048) else (2 if n >= 1024 else 3)
        ours_runs = 3 if quick else 15
        per_ref = max(1, ours_runs // ref_runs)
        torch.set_num_threads(1)
        fwd_bwd(ours, emb, ids)                                     # warm-up
        ref_times, ours_times = [], []
        ref_value = ours_value = float("nan")
        for k in range(ours_runs):
            if k % per_ref == 0 and len(ref_times) < ref_runs:
                seconds, ref_value = fwd_bwd(ref, emb, ids)
                ref_times.append(seconds)
            seconds, ours_value = fwd_bwd(ours, emb, ids)
            ours_times.append(seconds)
        torch.set_num_threads(2)
        two = [fwd_bwd(ours, emb, ids)[0] for _ in range(ours_runs)]
        torch.set_num_threads(1)
        r, o, o2 = statistics.median(ref_times), statistics.median(ours_times), statistics.median(two)
        if not math.isclose(ref_value, ours_value, rel_tol=1e-4):
            raise AssertionError(f"n={n}: reference loss {ref_value} != ours {ours_value}")
        print(f"{n:5d} {weights.choose_method(n):>7} {r:8.3f} {o:10.4f} {r / o:7.0f}x {o2:10.4f} "
              f"{r / o2:7.0f}x {len(ref_times):>3}/{ours_runs:<3}  {abs(ref_value - ours_value):.1e}")


def lookup_table(scores: sp.csr_matrix, popularity: np.ndarray, sizes: list[int], quick: bool) -> None:
    """Weight lookups alone: search vs scan on the full catalog, dense vs both on a small one."""
    torch.set_num_threads(1)
    runs = 3 if quick else 11
    rng = np.random.default_rng(1)
    top = np.sort(np.argsort(-popularity)[:6000])                  # 6000² = 3.6e7 ≤ dense limit
    small = sp.csr_matrix(scores[top][:, top])
    catalogs = {f"full N={scores.shape[0]}": (scores, popularity),
                f"top-{len(top)} items": (small, popularity[top])}
    print(f"\nWeight lookup alone (1 thread, ms, median of {runs})")
    print(f"{'catalog':<18} {'nnz':>8} {'n':>5} {'dense':>8} {'search':>8} {'scan':>8}  auto")
    for name, (s, pop) in catalogs.items():
        modes = {"search": PairWeights(s, method="search"), "scan": PairWeights(s, method="scan")}
        if s.shape[0] ** 2 <= 4e7:
            modes["dense"] = PairWeights(s, method="dense")
        auto = PairWeights(s)
        for n in sizes:
            ids = torch.sort(sample_items(min(n, s.shape[0]), pop, rng)).values
            cells, results = {}, {}
            for mode, module in modes.items():
                times = []
                for _ in range(runs):
                    start = time.perf_counter()
                    results[mode] = module(ids)
                    times.append(time.perf_counter() - start)
                cells[mode] = f"{statistics.median(times) * 1e3:8.2f}"
            base = results["search"]
            for mode, w in results.items():
                if not torch.equal(w, base):
                    raise AssertionError(f"{name} n={n}: {mode} lookup differs from search")
            print(f"{name:<18} {s.nnz:8d} {n:5d} {cells.get('dense', '       -'):>8} {cells['search']:>8} "
                  f"{cells['scan']:>8}  {auto.choose_method(n)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: n = 128, 512, few repeats")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="numbers of distinct items")
    parser.add_argument("--no-lookup", action="store_true", help="skip the lookup-only table")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([128, 512] if args.quick else [128, 512, 1024, 2048])

    users, items, positions, tokens = load_user_sequences()
    counts = cooccurrence_counts(users, items, positions, n_items=len(tokens), holdout=2)
    scores = normalized_scores(counts)
    popularity = np.bincount(items, minlength=len(tokens)).astype(np.float64)
    print(f"Amazon Beauty co-occurrence: {len(tokens) - 1} items, {counts.nnz // 2} co-occurring pairs "
          f"({counts.nnz / len(tokens) ** 2:.2%} of ordered pairs), torch {torch.__version__}")
    loss_table(scores, popularity, sizes, args.quick)
    if not args.no_lookup:
        lookup_table(scores, popularity, sizes, args.quick)


if __name__ == "__main__":
    main()
