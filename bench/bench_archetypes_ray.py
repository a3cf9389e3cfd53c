"""Benchmark: the archetype step's Ray workers vs its process pool on one machine.

``--ray_address`` exists to outgrow one machine (Ray actors on a cluster, one GPU each); this
measures what it costs where both can run — here.  Each backend runs the whole step
(``pipeline.run`` with ``--limit``: LLM loading, generation, the driver committing every
batch) from an empty cache in a fresh data root:

* ``in-process``: ``--workers=1`` (the driver is the worker);
* ``pool``: ``--workers=W`` spawned processes, one thread each;
* ``ray``: ``--workers=W --ray_address=local`` (a local Ray started and shut down by the run,
  W actors, one thread each).

Backends alternate within each round; medians over rounds; ratios against ``pool``.  The
generated token ids of every run are compared with the first in-process run (must be identical).

    python bench/bench_archetypes_ray.py                    # 64 ml-100k items, 16 tokens, 2 rounds
    python bench/bench_archetypes_ray.py --quick            # smoke: 16 items, 4 tokens, 1 round
"""
from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from recbole_genair.archetypes import pipeline
from recbole_genair.archetypes.store import ShardStore
from recbole_genair.paths import DATASET_DIR


def fresh_root(parent: Path, name: str) -> Path:
    src = DATASET_DIR / "ml-100k" / "ml-100k.item"
    if not src.is_file():
        raise SystemExit(f"{src} missing: run `python -m recbole_genair.datasets ml-100k` first")
    root = parent / name
    (root / "ml-100k").mkdir(parents=True)
    shutil.copy(src, root / "ml-100k" / "ml-100k.item")
    return root


def run_once(backend: str, root: Path, args) -> tuple[float, dict]:
    pipeline._WORKER.clear()  # every run pays its own model loading
    pipeline._DRIVER.clear()
    job = pipeline.ArchetypeJob(dataset="ml-100k", dataset_dir=root, batch_size=args.batch_size,
                                generation=pipeline.GenerationSettings(max_new_tokens=args.max_new_tokens),
                                limit=args.items, workers=1 if backend == "in-process" else args.workers,
                                ray_address="local" if backend == "ray" else None)
    start = time.perf_counter()
    summary = pipeline.run(job)
    seconds = time.perf_counter() - start
    store_dir = Path(summary["cache"])
    results = ShardStore(store_dir.parent, _settings(store_dir)).collect().results
    return seconds, {token: r[3] for token, r in results.items()}


def _settings(store_dir: Path) -> dict:
    import json
    return json.loads((store_dir / "meta.json").read_text())["settings"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.items, args.max_new_tokens, args.rounds = 16, 4, 1
    logging.basicConfig(level=logging.WARNING)
    backends = ["in-process", "pool", "ray"]
    times = {b: [] for b in backends}
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = backends[r % 3:] + backends[:r % 3]
            for backend in order:
                seconds, ids = run_once(backend, fresh_root(Path(tmp), f"{backend}-{r}"), args)
                reference = reference or ids
                same = sum(ids[t] == reference[t] for t in reference)
                times[backend].append(seconds)
                print(f"round {r} {backend:10s} {seconds:7.1f} s  ids identical {same}/{len(reference)}", flush=True)
                if same != len(reference):
                    raise SystemExit(f"{backend}: generated ids differ from the in-process run")
    base = statistics.median(times["pool"])
    print(f"\n{args.items} items, {args.max_new_tokens} new tokens, batch {args.batch_size}, "
          f"{args.workers} workers, {args.rounds} round(s); whole step incl. model loading")
    print("| backend | s (median) | items/s | vs pool |\n|---|--:|--:|--:|")
    for b in backends:
        m = statistics.median(times[b])
        print(f"| {b} | {m:.1f} | {args.items / m:.2f} | {base / m:.2f}x |")


if __name__ == "__main__":
    main()
