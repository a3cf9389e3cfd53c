"""Benchmark (not adopted: no gain measured): glibc's allocator settings and the extractor's decode.

Each decode step grows every layer's key/value cache with ``torch.cat``: a new tensor of a few
MB per layer, the old one freed.  glibc by default serves such blocks with ``mmap`` or trims them
back to the system, so their pages are faulted in again at every step.  This script times one
batch of 32 Amazon_Beauty prompts (64 new tokens, greedy, 1 thread) in fresh processes, half of
them with ``mallopt(M_MMAP_THRESHOLD, 1 GiB)`` and ``mallopt(M_TRIM_THRESHOLD, 2 GiB - 1)`` set
through ``ctypes`` before torch is imported (freed blocks stay in the heap and are reused).
The setting is process-wide and cannot be undone inside a process, so the two variants cannot
share one process: they alternate, one process at a time, and the medians and the per-pair
ratios are printed.  Each process runs the prefill alone (``max_new_tokens=1``) and then the
whole batch, so decode time = whole - prefill; a hash of the tokens and embeddings checks that
the setting changes no bit.  Run from the project root (about 1 minute per process):

    python bench/bench_malloc.py                 # 4 pairs
    python bench/bench_malloc.py --pairs 6 --batch 30
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def child(keep: bool, batch_index: int) -> None:
    if keep:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        assert libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
    import hashlib
    import logging
    import time
    import warnings

    import torch

    from bench_extraction import bench_prompts
    from recbole_genair.archetypes.extract import generate_and_embed
    from recbole_genair.archetypes.llm import load_llm
    from recbole_genair.archetypes.pipeline import plan_batches

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    llm = load_llm()
    tokens, ids, _ = bench_prompts(llm, None, "Amazon_Beauty")
    batch = [ids[i] for i in plan_batches(tokens, ids, 32)[batch_index]]
    kw = dict(stop_ids=llm.stop_ids, pad_id=llm.pad_id)
    generate_and_embed(llm.model, batch[:4], max_new_tokens=2, **kw)          # warm-up
    t0 = time.perf_counter()
    generate_and_embed(llm.model, batch, max_new_tokens=1, **kw)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = generate_and_embed(llm.model, batch, max_new_tokens=64, **kw)
    whole = time.perf_counter() - t0
    digest = hashlib.sha1(res.prefill.numpy().tobytes() + res.decoding.numpy().tobytes()
                          + json.dumps(res.generated).encode()).hexdigest()[:16]
    print(json.dumps({"keep": keep, "prefill": prefill, "whole": whole, "digest": digest}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=30, help="which of Beauty's planned batches of 32")
    parser.add_argument("--child", choices=("default", "keep"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child == "keep", args.batch)
        return
    runs = {"default": [], "keep": []}
    for p in range(args.pairs):
        for variant in (("default", "keep") if p % 2 == 0 else ("keep", "default")):
            out = subprocess.run([sys.executable, __file__, "--child", variant, "--batch", str(args.batch)],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            runs[variant].append(r)
            print(f"  pair {p + 1}: {variant:7s} prefill {r['prefill']:6.2f} s, whole {r['whole']:6.2f} s, "
                  f"decode {r['whole'] - r['prefill']:6.2f} s, digest {r['digest']}", flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("prefill", "whole")} for k, v in runs.items()}
    dec = {k: med[k]["whole"] - med[k]["prefill"] for k in med}
    per_pair = [d["whole"] / k["whole"] for d, k in zip(runs["default"], runs["keep"])]
    print(f"\nmedians: default whole {med['default']['whole']:.2f} s (decode {dec['default']:.2f}), "
          f"keep whole {med['keep']['whole']:.2f} s (decode {dec['keep']:.2f}); whole batch default / keep "
          f"{med['default']['whole'] / med['keep']['whole']:.3f}x (per pair "
          + ", ".join(f"{x:.3f}" for x in per_pair) + f"); decode {dec['default'] / dec['keep']:.3f}x")
    digests = {r["digest"] for v in runs.values() for r in v}
    print(f"same tokens and embeddings in every process: {len(digests) == 1}")


if __name__ == "__main__":
    main()
