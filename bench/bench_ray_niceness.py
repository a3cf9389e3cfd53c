"""Benchmark: a Ray Tune trial's speed on a busy machine, at Ray's worker niceness and at 0.

Claim checked: Ray starts its workers at nice 15, so on a machine whose cores are busy with
other work (another training run, a second sweep, an LLM job) a trial gets a small share of
its reserved CPU; ``recbole_genair.tune`` therefore starts its local Ray with
``worker_niceness: 0``.

What runs: ``--load`` busy-loop processes at nice 0 (default: one per core) stand in for
the machine's other work.  The same short training run — plain RecBole SASRec on ml-100k
(converted from the recbole wheel into a temp dir), hidden 32, one layer, batch 512, one
epoch, 1 torch thread — is timed three ways, rotated over ``--rounds``: in this process,
in a Ray task on a local Ray started with ``worker_niceness`` 15 (Ray's default) and with 0.
Reported: median RecBole epoch seconds per way and the ratios.

    python bench/bench_ray_niceness.py [--rounds 2] [--load N]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"epochs": 1, "hidden_size": 32, "inner_size": 64, "n_layers": 1, "MAX_ITEM_LIST_LENGTH": 20,
            "train_batch_size": 512, "eval_batch_size": 4096, "show_progress": False, "state": "WARNING",
            "torch_threads": 1, "learning_rate": 0.003}


def busy() -> None:
    while True:
        pass


def one_epoch(data_path: str, checkpoint_dir: str) -> float:
    from recbole_genair.quick_start import run
    result = run("SASRec", "ml-100k", "base", None,
                 {**SETTINGS, "data_path": data_path, "checkpoint_dir": checkpoint_dir}, saved=False)
    return float(result["median_epoch_seconds"])


def in_ray(niceness: int, data_path: str, checkpoint_dir: str) -> float:
    import ray
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             _system_config={"worker_niceness": niceness})
    try:
        return ray.get(ray.remote(num_cpus=1)(one_epoch).remote(data_path, checkpoint_dir))
    finally:
        ray.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1, help="busy processes at nice 0")
    args = parser.parse_args()

    from recbole_genair.data.converters import convert
    work = Path(tempfile.mkdtemp(prefix="bench_ray_niceness_"))
    convert("ml-100k", out_dir=work, progress=False)
    data_path, ckpt = str(work), str(work / "saved")

    ways = {"in-process": lambda: one_epoch(data_path, ckpt),
            "ray, worker_niceness 15 (Ray's default)": lambda: in_ray(15, data_path, ckpt),
            "ray, worker_niceness 0 (recbole_genair.tune)": lambda: in_ray(0, data_path, ckpt)}
    load = [mp.Process(target=busy, daemon=True) for _ in range(args.load)]
    for proc in load:
        proc.start()
    print(f"{args.load} busy process(es) started; {os.cpu_count()} cores", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    try:
        names = list(ways)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                started = time.perf_counter()
                seconds[name].append(ways[name]())
                print(f"round {r + 1}: {name}: epoch {seconds[name][-1]:.2f} s "
                      f"(call {time.perf_counter() - started:.1f} s)", flush=True)
    finally:
        for proc in load:
            proc.terminate()
    base = statistics.median(seconds["in-process"])
    print("\n| way | epoch s (median) | vs in-process |\n|---|--:|--:|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
