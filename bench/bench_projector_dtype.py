"""Benchmark: GenAIR's projector step in float32 vs under bfloat16 autocast (CPU).

Under full-softmax CE every training step projects the whole item table (12,102 Beauty rows:
frozen 211-dim features → Linear 256 → LayerNorm → GELU → Linear 128) and scores a batch
against it; that fixed cost is why the GenAIR/base epoch ratio misses 1.15 on SASRec and
GRU4Rec (``bench_model_cost.py``).  This measures whether running the projector in bf16
(``torch.autocast("cpu", torch.bfloat16)``; native on CPUs with AMX/AVX512-BF16) would close
it, and how much it changes the table.  One step = project, score 128 sequence states, CE
on random targets, backward; both variants alternate within each round, 1 thread.

    python bench/bench_projector_dtype.py            # 3 rounds of 15 steps each
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from recbole_genair.model.layers import make_projector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=12102)
    parser.add_argument("--in_dim", type=int, default=211)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    features = torch.randn(args.items, args.in_dim)
    projector = make_projector(args.in_dim, args.hidden)
    states = torch.randn(128, args.hidden)
    targets = torch.randint(0, args.items, (128,))

    def step(bf16: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            table = projector(features)
        loss = F.cross_entropy(states @ table.float().t(), targets)
        projector.zero_grad()
        loss.backward()
        return table.detach().float()

    times = {False: [], True: []}
    for r in range(args.rounds):
        for bf16 in (False, True) if r % 2 == 0 else (True, False):
            for _ in range(args.steps):
                start = time.perf_counter()
                step(bf16)
                times[bf16].append(time.perf_counter() - start)
    fp32_ms = statistics.median(times[False]) * 1e3
    bf16_ms = statistics.median(times[True]) * 1e3
    cos = F.cosine_similarity(step(False), step(True), dim=-1)
    print(f"{args.items} rows, {args.in_dim} -> {2 * args.hidden} -> {args.hidden}, 1 thread, "
          f"{args.rounds} rounds x {args.steps} steps")
    print(f"| variant | ms/step (median) | vs float32 |\n|---|--:|--:|\n| float32 | {fp32_ms:.1f} | 1.00x |\n"
          f"| bf16 autocast | {bf16_ms:.1f} | {fp32_ms / bf16_ms:.2f}x |")
    print(f"table rows, bf16 vs float32: cosine min {cos.min():.5f}, mean {cos.mean():.5f}")


if __name__ == "__main__":
    main()
