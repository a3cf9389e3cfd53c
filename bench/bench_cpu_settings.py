"""Benchmark: what batch size and sequence length do to a base backbone's epoch time on CPU.

Claim checked (issue #2): the obvious CPU settings make a full run fit in minutes rather than
hours.  Threads are settled elsewhere (one torch thread per process, one process per core:
see the README and ``bench/RESULTS.md``); this times the other two knobs.

Per backbone, plain RecBole models (``--method=base``, CE over all items, the properties'
hidden size and layers) are built for each (``MAX_ITEM_LIST_LENGTH``, ``train_batch_size``)
variant on the same data set, each with its own loader and Adam.  After warm-up, the variants'
training steps (forward, backward, Adam step) alternate in rotated rounds
(``bench_model_cost.timed_rounds``).  Epoch time is estimated as
``batches per epoch × (median step + loader time per batch)``; the ratio is against the
properties' setting (length 50, batch 128).  Estimates, not whole epochs; evaluation (a few
seconds per epoch) is left out.  A larger batch also changes the optimisation (fewer, larger
steps per epoch); how many epochs a run then needs is not measured here.

    python bench/bench_cpu_settings.py [--dataset Yelp] [--backbones SASRec,GRU4Rec,BERT4Rec]
        [--steps 24] [--warmup 3] [--rounds 3]
"""
from __future__ import annotations

import argparse
import datetime
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bench_model_cost import build, med, timed_rounds, train_step

VARIANTS = {"len 50, batch 128 (properties)": (50, 128), "len 20, batch 128": (20, 128),
            "len 20, batch 512": (20, 512), "len 50, batch 512": (50, 512)}


def bench_backbone(backbone: str, args, extra: dict) -> list[dict]:
    models, opts, batches, n_batches, load_s = {}, {}, {}, {}, {}
    for name, (length, batch) in VARIANTS.items():
        config, _, train, _, model = build(backbone, args.dataset, "base",
                                           {**extra, "MAX_ITEM_LIST_LENGTH": length, "train_batch_size": batch})
        started, taken = time.perf_counter(), []
        for b in train:
            taken.append(b)
            if len(taken) >= args.warmup + args.steps:
                break
        load_s[name] = (time.perf_counter() - started) / len(taken)
        models[name], batches[name], n_batches[name] = model.train(), taken, len(train)
        opts[name] = torch.optim.Adam(model.parameters(), lr=float(config["learning_rate"]))
        for b in taken[:args.warmup]:
            train_step(model, opts[name], b)

    def step(name: str, i: int) -> float:
        return train_step(models[name], opts[name], batches[name][args.warmup + i])

    times = timed_rounds(step, list(VARIANTS), list(range(args.steps)), args.rounds)
    rows = []
    for name in VARIANTS:
        epoch = n_batches[name] * (med(times[name]) + load_s[name])
        rows.append({"backbone": backbone, "variant": name, "batches": n_batches[name],
                     "step_ms": 1000 * med(times[name]), "load_ms": 1000 * load_s[name], "epoch_s": epoch})
    ref = rows[0]["epoch_s"]
    for row in rows:
        row["ratio"] = row["epoch_s"] / ref
        print(f"{backbone:9s} {row['variant']:32s} {row['batches']:5d} batches  step {row['step_ms']:7.1f} ms  "
              f"loader {row['load_ms']:5.1f} ms  epoch ≈ {row['epoch_s']:6.0f} s  {row['ratio']:.2f}x", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="Yelp")
    parser.add_argument("--backbones", default="SASRec,GRU4Rec,BERT4Rec")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.WARNING)
    tmp = tempfile.TemporaryDirectory(prefix="bench_cpu_settings_")
    extra = {"show_progress": False, "state": "WARNING", "torch_threads": 1,
             "checkpoint_dir": str(Path(tmp.name) / "saved")}
    print(f"# {args.dataset}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
          f"torch {torch.__version__}, 1 thread, {args.steps} timed steps after {args.warmup} warm-up, "
          f"{args.rounds} rounds", flush=True)
    rows = [row for b in args.backbones.split(",") for row in bench_backbone(b, args, extra)]
    print("\n| backbone | variant | batches/epoch | step ms | loader ms/batch | epoch s (est.) | vs properties |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['backbone']} | {r['variant']} | {r['batches']} | {r['step_ms']:.1f} | {r['load_ms']:.1f} "
              f"| {r['epoch_s']:.0f} | {r['ratio']:.2f}x |")
    tmp.cleanup()


if __name__ == "__main__":
    main()
