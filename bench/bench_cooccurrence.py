"""Benchmark: vectorised ``cooccurrence_counts`` vs the naive double loop (paper Eq. 10).

Amazon Beauty 5-core (``../shared/data/amazon_beauty_5core/user_sequence.txt``: one line per
user, ``user asin asin ...`` in time order; position = timestamp, holdout = 2).  Both builds
run side by side in this process; the counts must be identical.  Run from the project root:

    python bench/bench_cooccurrence.py            # full
    python bench/bench_cooccurrence.py --quick    # smoke: fewer repeats

Besides the data in file order (users grouped, time-ordered, as RecBole's ``inter_feat``),
the rows are also shuffled, which forces the stable sort.  The full run adds ml-100k (from
the RecBole wheel; long, dense sequences) and times both counting algorithms (pair
enumeration, sparse product) to show the automatic choice.  Runs are interleaved so that
load from other processes hits all sides alike.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

import recbole_genair.data.cooccurrence as cooc
from recbole_genair.data.cooccurrence import cooccurrence_counts, naive_cooccurrence_counts
from recbole_genair.paths import SHARED_DATA_DIR

BEAUTY = SHARED_DATA_DIR / "amazon_beauty_5core" / "user_sequence.txt"


def load_user_sequences(path: Path = BEAUTY) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(user, item, position, tokens)``: one row per interaction, items numbered 1.. (0 = padding).

    ``tokens[k]`` is the asin of item ``k`` (``tokens[0] = "[PAD]"``).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Amazon Beauty user sequences not found")
    token_id: dict[str, int] = {}
    users: list[int] = []
    items: list[int] = []
    positions: list[int] = []
    with open(path, encoding="utf-8") as fh:
        for user, line in enumerate(ln for ln in fh if ln.strip()):
            for pos, asin in enumerate(line.split()[1:]):
                users.append(user)
                items.append(token_id.setdefault(asin, len(token_id) + 1))
                positions.append(pos)
    tokens = ["[PAD]"] + list(token_id)
    return (np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64),
            np.asarray(positions, dtype=np.int64), tokens)


def timed(fn: Callable[[], object], repeats: int) -> tuple[object, float, list[float]]:
    """``(last result, median seconds, all seconds)`` of ``repeats`` calls."""
    times = []
    out = None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times), times


def ml100k() -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """ml-100k from the RecBole wheel (long, dense sequences), or None if absent."""
    import recbole
    from recbole_genair.data.atomic import read_inter_columns

    path = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    if not path.is_file():
        return None
    users, items, times, tokens = read_inter_columns(path)
    return users, items, times, len(tokens)


def forced(algorithm: str) -> Callable:
    """``cooccurrence_counts`` with the counting algorithm fixed (for the side table)."""
    def run(u: np.ndarray, i: np.ndarray, p: np.ndarray, n_items: int) -> object:
        saved = cooc.counting_algorithm
        cooc.counting_algorithm = lambda n_pairs, n: algorithm
        try:
            return cooccurrence_counts(u, i, p, n_items, holdout=2)
        finally:
            cooc.counting_algorithm = saved
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: 1 naive run, 3 vectorised, Beauty only")
    parser.add_argument("--repeats", type=int, default=None, help="runs per side (default 3 naive / 11 ours)")
    args = parser.parse_args(argv)
    naive_runs = 1 if args.quick else (args.repeats or 3)
    fast_runs = 3 if args.quick else (args.repeats or 11)

    users, items, positions, tokens = load_user_sequences()
    n_items = len(tokens)
    print(f"Amazon Beauty: {len(np.unique(users))} users, {n_items - 1} items, {len(items)} interactions; "
          f"holdout=2; naive x{naive_runs}, vectorised x{fast_runs} (median, interleaved)")
    perm = np.random.default_rng(0).permutation(len(items))
    cases = {"Beauty, file order": (users, items, positions, n_items),
             "Beauty, shuffled": (users[perm], items[perm], positions[perm], n_items)}
    if not args.quick:
        extra = ml100k()
        if extra is not None:
            cases["ml-100k (extra)"] = extra
    print(f"{'input':<20} {'naive s':>8} {'ours s':>8} {'ratio':>7}  {'pairs s':>8} {'product s':>9}  "
          f"{'chosen':>7}  item pairs")
    for name, (u, i, p, n) in cases.items():
        naive, ours, pairs, product = [], [], [], []
        result = reference = None
        for k in range(fast_runs):
            if k % max(1, fast_runs // naive_runs) == 0 and len(naive) < naive_runs:
                reference, seconds, _ = timed(lambda: naive_cooccurrence_counts(u, i, p, n, holdout=2), 1)
                naive.append(seconds)
            result, seconds, _ = timed(lambda: cooccurrence_counts(u, i, p, n, holdout=2), 1)
            ours.append(seconds)
            pairs.append(timed(lambda: forced("pairs")(u, i, p, n), 1)[1])
            product.append(timed(lambda: forced("product")(u, i, p, n), 1)[1])
        if (result != reference).nnz or result.shape != reference.shape:
            raise AssertionError(f"{name}: vectorised counts differ from the naive reference")
        lengths = np.diff(cooc._user_item_matrix(*cooc._training_mask(u, p, 2), i, n).indptr).astype(np.int64)
        chosen = cooc.counting_algorithm(int((lengths * (lengths - 1) // 2).sum()), n)
        r, o = statistics.median(naive), statistics.median(ours)
        print(f"{name:<20} {r:8.3f} {o:8.4f} {r / o:6.1f}x  {statistics.median(pairs):8.4f} "
              f"{statistics.median(product):9.4f}  {chosen:>7}  {result.nnz // 2} (identical)")


if __name__ == "__main__":
    main()
