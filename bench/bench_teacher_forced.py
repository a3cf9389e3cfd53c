"""Benchmark: ``--from-texts`` rebuild (teacher forcing) with and without the shared prompt prefix.

``python -m recbole_genair.archetypes --dataset=NAME --from-texts`` recomputes both pooled
embeddings from the committed generated ids in one forward pass per batch.  With
``share_prefix`` (the default) the batch's common prompt prefix (chat template + the paper's
instruction) runs once as one row, as in generation.  This script times both on the same
batches of the committed ml-100k texts, in one process, alternating, medians over rounds, and
prints how far the two sets of embeddings are apart.  Run from the project root:

    python bench/bench_teacher_forced.py                  # first 256 ml-100k items, batch 32, 3 rounds
    python bench/bench_teacher_forced.py --items 64 --rounds 1   # smoke
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from bench_extraction import bench_prompts
from recbole_genair.archetypes.extract import common_prefix_length, teacher_forced
from recbole_genair.archetypes.llm import load_llm
from recbole_genair.archetypes.pipeline import ArchetypeJob, plan_batches, read_texts, texts_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    llm = load_llm()
    tokens, prompt_ids, _ = bench_prompts(llm, args.items)
    records = read_texts(texts_path(ArchetypeJob(dataset="ml-100k").data_dir, "ml-100k"))
    generated = [records[t]["generated_ids"] for t in tokens]
    batches = plan_batches(tokens, prompt_ids, args.batch_size)
    n_tokens = sum(len(p) + len(g) for p, g in zip(prompt_ids, generated))
    prefix = [common_prefix_length([prompt_ids[i] for i in rows]) for rows in batches]
    print(f"# {len(tokens)} ml-100k items (committed texts), {len(batches)} batches of <= {args.batch_size}, "
          f"{n_tokens} prompt+text tokens, common prefix {min(prefix)}-{max(prefix)} tokens per batch, "
          f"{args.threads} thread(s), torch {torch.__version__}", flush=True)

    def rebuild(share: bool):
        pre, dec = [], []
        for rows in batches:
            p, d = teacher_forced(llm.model, [prompt_ids[i] for i in rows], [generated[i] for i in rows],
                                  llm.pad_id, share_prefix=share)
            pre.append(p)
            dec.append(d)
        return torch.cat(pre), torch.cat(dec)

    rebuild(True), rebuild(False)  # warm-up
    times = {"shared prefix": [], "unshared": []}
    out = {}
    for r in range(args.rounds):
        for name in (list(times) if r % 2 == 0 else list(times)[::-1]):
            t0 = time.perf_counter()
            out[name] = rebuild(name == "shared prefix")
            times[name].append(time.perf_counter() - t0)
            print(f"  round {r + 1}: {name:14s} {times[name][-1]:6.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\n| pass | s (median) | items/s | tokens/s |\n|---|--:|--:|--:|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {len(tokens) / v:.1f} | {n_tokens / v:.0f} |")
    print(f"\nshared prefix vs unshared: {med['unshared'] / med['shared prefix']:.2f}x")
    for i, what in enumerate(("prefill", "decoding")):
        a, b = out["shared prefix"][i], out["unshared"][i]
        print(f"{what}: cos min {F.cosine_similarity(a, b).min():.6f}, max |diff| {(a - b).abs().max():.2e}")


if __name__ == "__main__":
    main()
