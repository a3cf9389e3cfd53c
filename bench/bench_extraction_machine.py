"""Benchmark: archetype extraction on the WHOLE machine, each method laid out as it runs.

``bench_extraction.py`` compares the methods at one thread each (equal resources, one core).
This script answers the user's question instead: on this machine, how much faster does the
archetype step finish than the released approach?  Both get all cores, each the way it uses them:

* ``ref16 released``: the released approach (``model.generate(..., output_hidden_states=True,
  return_dict_in_generate=True)``, batch 16 in item order; see ``bench_extraction.py``) in one
  process with torch's default thread count (= the number of cores), on the LLM loaded with
  transformers' own attention (``load_llm(gqa_attention=False)``), as the released code runs it;
* ``ours32 workers``: our step as ``python -m recbole_genair.archetypes --workers=C --threads=1``
  runs it: C spawned processes, one thread each, each with the LLM loaded once
  (``pipeline._init_worker``), length-sorted batches of 32 handed out one at a time.

Two more rows separate the two factors: ``ours32 1 proc`` (our loop, one process with all
threads) and ``ref16 workers`` (the reference's batches through the same worker pool: what the
process layout alone gives the released approach).  A ``--single`` run adds ``ref16 1 thread``
(the other benchmark's baseline).  Methods alternate within each round, medians over rounds.
Model loading is not timed (the pool is started and warmed up before the rounds).  Each
method's generated token ids are compared with our single-process run (must be identical).

    python bench/bench_extraction_machine.py                 # 128 ml-100k items, 32 tokens, 3 rounds
    python bench/bench_extraction_machine.py --quick         # smoke: 32 items, 8 tokens, 1 round
    python bench/bench_extraction_machine.py --max_new_tokens 64 --single

Run on an otherwise idle machine: the worker layout needs the cores it is given.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import statistics
import time
import warnings
from typing import Callable, Dict, List

import torch

from bench_extraction import bench_prompts, fixed_pool, reference_generate
from recbole_genair.archetypes import pipeline
from recbole_genair.archetypes.extract import generate_and_embed
from recbole_genair.archetypes.llm import GGUF_CACHE_DIR, load_llm
from recbole_genair.archetypes.pipeline import plan_batches


def init_worker(threads: int) -> None:
    """Both LLMs in this process: ours as the step loads it, and the reference's with
    transformers' own attention (``gqa_attention=False``), as the released code runs it."""
    pipeline._init_worker(pipeline.DEFAULT_LLM, "cpu", "float32", threads, GGUF_CACHE_DIR)
    if "stock" not in pipeline._WORKER:
        pipeline._WORKER["stock"] = load_llm(pipeline.DEFAULT_LLM, gqa_attention=False, gguf_cache=GGUF_CACHE_DIR)


def extract_batch(task) -> List[List[int]]:
    """One batch with the LLM already loaded in this process: generated ids per row."""
    method, batch, max_new_tokens = task
    llm = pipeline._WORKER["llm" if method == "ours" else "stock"]
    if method == "ours":
        return generate_and_embed(llm.model, batch, max_new_tokens=max_new_tokens, stop_ids=llm.stop_ids,
                                  pad_id=llm.pad_id).generated
    ids, mask, out = reference_generate(llm.model, batch, max_new_tokens, llm.stop_ids, llm.pad_id)
    return fixed_pool(out, mask, ids.shape[1], llm.stop_ids)[2]


def in_process(method: str, prompt_ids, batches, n_tokens: int, threads: int) -> Dict[int, List[int]]:
    torch.set_num_threads(threads)
    out = {}
    for rows in batches:
        for i, gen in zip(rows, extract_batch((method, [prompt_ids[i] for i in rows], n_tokens))):
            out[i] = gen
    return out


def in_pool(pool, method: str, prompt_ids, batches, n_tokens: int) -> Dict[int, List[int]]:
    tasks = [(method, [prompt_ids[i] for i in rows], n_tokens) for rows in batches]
    out = {}
    for rows, gens in zip(batches, pool.imap(extract_batch, tasks, chunksize=1)):
        out.update(zip(rows, gens))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=128)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="worker processes / threads")
    parser.add_argument("--single", action="store_true", help="also time the reference at 1 thread")
    parser.add_argument("--quick", action="store_true", help="smoke: 32 items, 8 tokens, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.items, args.max_new_tokens, args.rounds = 32, 8, 1
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    C, N = args.cores, args.max_new_tokens

    init_worker(C)
    llm = pipeline._WORKER["llm"]
    tokens, prompt_ids, item_order = bench_prompts(llm, args.items)
    n = len(prompt_ids)
    sorted32 = plan_batches(tokens, prompt_ids, 32)
    print(f"# {n} ml-100k items, max_new_tokens={N}, greedy, {C} cores (os.cpu_count()={os.cpu_count()}), "
          f"torch {torch.__version__}; load average before start: {os.getloadavg()}", flush=True)

    pool = mp.get_context("spawn").Pool(C, initializer=init_worker, initargs=(1,))
    methods: Dict[str, Callable] = {
        f"ref16 released (1 proc x {C} threads)": lambda: in_process("ref", prompt_ids, item_order, N, C),
        f"ours32 workers ({C} procs x 1 thread)": lambda: in_pool(pool, "ours", prompt_ids, sorted32, N),
        f"ours32 1 proc ({C} threads)": lambda: in_process("ours", prompt_ids, sorted32, N, C),
        f"ref16 workers ({C} procs x 1 thread)": lambda: in_pool(pool, "ref", prompt_ids, item_order, N),
    }
    if args.single:
        methods["ref16 1 proc x 1 thread"] = lambda: in_process("ref", prompt_ids, item_order, N, 1)
    names = list(methods)
    ref_name, ours_name = names[0], names[1]

    # warm-up: every worker and the main process run a small batch once
    in_pool(pool, "ours", prompt_ids, [sorted32[0][:4]] * C, 2)
    in_pool(pool, "ref", prompt_ids, [item_order[0][:4]] * C, 2)
    in_process("ours", prompt_ids, [sorted32[0][:4]], 2, C)
    in_process("ref", prompt_ids, [item_order[0][:4]], 2, C)

    times: Dict[str, List[float]] = {k: [] for k in names}
    tokens_of: Dict[str, Dict[int, List[int]]] = {}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            tokens_of[name] = methods[name]()
            dt = time.perf_counter() - t0
            times[name].append(dt)
            print(f"  round {r + 1}: {name:36s} {dt:7.2f} s  ({n / dt:5.2f} items/s)  load {os.getloadavg()[0]:.2f}",
                  flush=True)
    pool.close()
    pool.join()

    med = {k: statistics.median(v) for k, v in times.items()}
    base = tokens_of[f"ours32 1 proc ({C} threads)"]
    print(f"\n## whole-machine throughput (median of {args.rounds} rounds; ratio = released time / method time)")
    print("| method | s | items/s | vs ref16 released | tokens identical to ours32 1 proc |")
    print("|---|--:|--:|--:|--:|")
    for k in names:
        same = sum(tokens_of[k][i] == base[i] for i in range(n))
        print(f"| {k} | {med[k]:.2f} | {n / med[k]:.2f} | {med[ref_name] / med[k]:.2f}x | {same}/{n} |")
    ratio = med[ref_name] / med[ours_name]
    print(f"\nours (as the step runs with --workers={C} --threads=1) vs the released approach (as released): "
          f"{ratio:.2f}x (goal >= 3x: {'met' if ratio >= 3 else 'NOT met'}); on the same worker layout: "
          f"{med[names[3]] / med[ours_name]:.2f}x; worker layout vs one process, ours: "
          f"{med[names[2]] / med[ours_name]:.2f}x, reference: {med[ref_name] / med[names[3]]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
