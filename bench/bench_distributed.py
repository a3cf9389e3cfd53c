"""Benchmark: one training run on several CPU processes (``--nproc``) against one process.

Claim checked: what ``run(..., nproc=2)`` (two gloo CPU processes, one torch thread each)
buys over one process on the same cores — the multi-GPU path exercised on CPUs.  Layouts,
each a full ``recbole_genair.quick_start.run`` (data loading, training, validation, test):

* ``1 process x 1 thread``
* ``1 process x N threads`` (N = nproc)
* ``N processes x 1 thread`` (``nproc=N``: users split among the processes, gradients all-reduced)

Same data, model, seed and settings; the global training batch is the same in all three
(RecBole divides ``train_batch_size`` by the world size).  Reported per layout: the median
training epoch (``median_epoch_seconds`` of the run), the whole run's wall time, and the test
metrics (the distributed run shuffles differently, so they differ slightly).  Layouts rotate
over ``--rounds`` rounds; medians over rounds; ratios against ``1 process x 1 thread``.

Run from the project root on an otherwise idle machine::

    python bench/bench_distributed.py [--model SASRec] [--method genair] [--dataset ml-100k]
                                      [--epochs 2] [--nproc 2] [--rounds 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from recbole_genair.distributed import free_port
from recbole_genair.quick_start import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--method", default="genair")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    layouts = [("1 process x 1 thread", 1, 1), (f"1 process x {args.nproc} threads", 1, args.nproc),
               (f"{args.nproc} processes x 1 thread", args.nproc, 1)]
    epoch, wall, metrics = {n: [] for n, *_ in layouts}, {n: [] for n, *_ in layouts}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, nproc, threads in layouts[round_ % 3:] + layouts[:round_ % 3]:
                settings = {"epochs": args.epochs, "torch_threads": threads, "show_progress": False,
                            "state": "WARNING", "checkpoint_dir": f"{tmp}/saved"}
                started = time.perf_counter()
                result = run(args.model, args.dataset, args.method, config_dict=settings,
                             nproc=nproc, ip="127.0.0.1", port=free_port())
                wall[name].append(time.perf_counter() - started)
                epoch[name].append(result["median_epoch_seconds"])
                metrics[name] = result["test_result"]
                print(f"round {round_}: {name}: epoch {epoch[name][-1]:.1f} s, run {wall[name][-1]:.1f} s", flush=True)
    first = layouts[0][0]
    base_epoch, base_wall = statistics.median(epoch[first]), statistics.median(wall[first])
    print(f"\n{args.model} / {args.method} / {args.dataset}, {args.epochs} epochs, medians of {args.rounds} rounds")
    print("| layout | epoch s | speed-up | run s | speed-up | test HR@10 / NDCG@10 |")
    print("|---|--:|--:|--:|--:|---|")
    for name, *_ in layouts:
        e, w = statistics.median(epoch[name]), statistics.median(wall[name])
        print(f"| {name} | {e:.1f} | {base_epoch / e:.2f}x | {w:.1f} | {base_wall / w:.2f}x "
              f"| {metrics[name]['hit@10']:.4f} / {metrics[name]['ndcg@10']:.4f} |")


if __name__ == "__main__":
    main()
