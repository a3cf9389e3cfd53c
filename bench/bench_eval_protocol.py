"""Benchmark: the fixed-100-negatives evaluation costs what full ranking costs.

Claim (README, "Evaluation protocol"): ranking each user's target against 100 negatives
drawn once per user, by masking ``full_sort_predict`` scores, costs the same as full ranking,
while RecBole's own ``uni100`` mode (redrawn negatives, ``predict`` on every candidate row)
is far slower.

One process, one untrained SASRec per mode built from the same config and seed, 1 torch
thread; the three evaluations of the validation set alternate in rounds and the median
time of each is compared.  Run from the project root:

    python bench/bench_eval_protocol.py [--dataset ml-100k] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from recbole_genair.quick_start import build_config, prepare

COMMON = {"show_progress": False, "state": "WARNING", "torch_threads": 1, "epochs": 1}


def build(dataset: str, **overrides):
    config = build_config("SASRec", dataset, "base", config_dict=dict(COMMON, **overrides))
    _, (_, valid, _), model, trainer = prepare(config)
    return valid, trainer


def timed(valid, trainer) -> tuple[float, dict]:
    start = time.perf_counter()
    result = trainer.evaluate(valid, load_best_model=False)
    return time.perf_counter() - start, result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    modes = {
        "fixed 100 negatives (ours)": build(args.dataset),
        "full ranking": build(args.dataset, eval_negatives=0),
        "RecBole uni100": build(args.dataset, eval_negatives=0,
                                eval_args={"split": {"LS": "valid_and_test"}, "order": "TO",
                                           "group_by": "user", "mode": "uni100"}),
    }
    times = {name: [] for name in modes}
    results = {}
    for name, (valid, trainer) in modes.items():  # warm-up
        timed(valid, trainer)
    for _ in range(args.rounds):
        for name, (valid, trainer) in modes.items():
            seconds, results[name] = timed(valid, trainer)
            times[name].append(seconds)
    ours = statistics.median(times["fixed 100 negatives (ours)"])
    print(f"{args.dataset}, SASRec (untrained), validation set, median of {args.rounds} rounds, 1 thread")
    print(f"{'mode':28s} {'seconds':>9s} {'/ ours':>8s}  hit@10")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:28s} {med:9.3f} {med / ours:8.2f}  {results[name]['hit@10']:.4f}")


if __name__ == "__main__":
    main()
