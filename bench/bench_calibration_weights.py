"""Analysis: how many in-batch calibration pairs the behavioural weights touch.

Claim (bench/RESULTS.md, "Past α = 10, and γ at α = 10"): γ barely moves GenAIR's results
because almost no pair of a training batch's distinct target items ever co-occurs in a
user's training sequence, so ``w(i, j) = exp(-γ·S(i, j))`` is 1 for nearly every pair
whatever γ is.

The script rebuilds what the calibration loss sees in one epoch: every training target of
RecBole's sequential augmentation (each item of a user's training sequence after the first;
the last two interactions, the valid and test targets, are held out), shuffled with a seed and
cut into batches of ``--batch_size``; per batch the distinct target items, their ordered pairs
``i≠j``, the share of those pairs with ``C(i, j) > 0`` and the mean weight at each ``--gammas``
value (``S`` from :mod:`recbole_genair.data.cooccurrence`, Eq. 10-12).  Printed: the mean over
batches, and the same for a uniform draw of items (what the share would be without
popularity).

    python bench/bench_calibration_weights.py --dataset=Amazon_Beauty [--batch_size 128] [--gammas 1,5]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from recbole_genair.data import cooccurrence as cooc
from recbole_genair.data.atomic import read_inter_columns
from recbole_genair.paths import DATASET_DIR


def training_targets(users: np.ndarray, items: np.ndarray, times: np.ndarray, holdout: int) -> np.ndarray:
    """Item index of every training target: the training part ``cooccurrence_counts`` counts, minus each user's first item."""
    rows, user_code = cooc._training_mask(users, times, holdout)
    not_first = np.r_[False, user_code[1:] == user_code[:-1]]
    return items[rows[not_first]]


def batch_stats(batch: np.ndarray, scores, gammas: list[float]) -> tuple[int, float, list[float]]:
    """Distinct items, share of their ordered pairs with S > 0, mean w per γ (pairs i≠j)."""
    distinct = np.unique(batch)
    n = len(distinct)
    block = scores[distinct][:, distinct].toarray()
    off = ~np.eye(n, dtype=bool)
    s = block[off]
    return n, float((s > 0).mean()), [float(np.exp(-g * s).mean()) for g in gammas]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="Amazon_Beauty")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--gammas", default="1,5")
    parser.add_argument("--holdout", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    gammas = [float(g) for g in args.gammas.split(",")]

    users, items, times, tokens = read_inter_columns(DATASET_DIR / args.dataset / f"{args.dataset}.inter")
    start = time.perf_counter()
    counts = cooc.cooccurrence_counts(users, items, times, n_items=len(tokens), holdout=args.holdout)
    scores = cooc.normalized_scores(counts).tocsr()
    print(f"{args.dataset}: {len(tokens):,} items, {counts.nnz:,} co-occurring ordered pairs "
          f"({counts.nnz / (len(tokens) * (len(tokens) - 1)):.2e} of all), C_max {counts.max()}, "
          f"built in {time.perf_counter() - start:.1f} s")

    targets = training_targets(users, items, times, args.holdout)
    rng = np.random.default_rng(args.seed)
    draws = {"training batches (one epoch)": rng.permutation(targets),
             "uniform items (same number)": rng.integers(0, len(tokens), len(targets))}
    for name, stream in draws.items():
        rows = [batch_stats(stream[i:i + args.batch_size], scores, gammas)
                for i in range(0, len(stream) - args.batch_size + 1, args.batch_size)]
        n = np.mean([r[0] for r in rows])
        share = np.mean([r[1] for r in rows])
        weights = ", ".join(f"γ={g:g}: {np.mean([r[2][k] for r in rows]):.5f}" for k, g in enumerate(gammas))
        print(f"{name}: {len(rows):,} batches of {args.batch_size}; distinct items per batch {n:.1f}; "
              f"pairs with C > 0: {share:.4%}; mean w over pairs: {weights}")


if __name__ == "__main__":
    main()
