"""Benchmark: GenAIR's projector step in float32 vs bfloat16 (CPU), and how far its gradients move.

Under full-softmax CE every training step projects the whole item table (12,102 Beauty rows:
frozen 211-dim features → Linear 256 → LayerNorm → GELU → Linear 128) and scores a batch
against it; that fixed cost is why the GenAIR/base epoch ratio misses 1.15 on SASRec and
GRU4Rec (``bench_model_cost.py``).  Variants, all with the same weights:

* ``float32`` — the paper's projector;
* ``bf16 Linear maps`` — what ``projector_dtype: bfloat16`` ships (``ArchetypeItemEmbedding``
  with ``autocast_dtype``): the two Linear maps under bf16 autocast, LayerNorm/GELU in float32;
* ``bf16 autocast, whole projector`` — the first version of the option, kept here for
  comparison: LayerNorm then runs in bf16 too;
* ``float32, torch.compile`` (with ``--compile``) — the float32 table through
  ``torch.compile`` (inductor; compiled once before timing, ~40 s here), same weights.

One step = project, score 128 sequence states, CE on random targets, backward; the variants
alternate within each round, 1 thread.  Also printed: the cosine of the table rows to float32
and each parameter's gradient error ``||g - g_fp32|| / ||g_fp32||``.

    python bench/bench_projector_dtype.py            # 3 rounds of 15 steps each
    python bench/bench_projector_dtype.py --compile  # also torch.compile
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from recbole_genair.model.layers import ArchetypeItemEmbedding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=12102)
    parser.add_argument("--in_dim", type=int, default=211)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--compile", action="store_true", help="add the torch.compile variant")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    features = torch.randn(args.items, args.in_dim)
    fp32 = ArchetypeItemEmbedding(features, args.hidden)
    linears = ArchetypeItemEmbedding(features, args.hidden, autocast_dtype=torch.bfloat16)
    linears.load_state_dict(fp32.state_dict())
    states = torch.randn(128, args.hidden)
    targets = torch.randint(0, args.items, (128,))

    def whole_autocast() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rows = fp32.projector(fp32.features)
        return rows.float() * fp32.row_mask

    variants = {"float32": (fp32, fp32.project), "bf16 Linear maps (shipped)": (linears, linears.project),
                "bf16 autocast, whole projector": (fp32, whole_autocast)}
    if args.compile:
        compiled = ArchetypeItemEmbedding(features, args.hidden)
        compiled.load_state_dict(fp32.state_dict())
        variants["float32, torch.compile"] = (compiled, torch.compile(compiled.project))

    def step(name: str):
        module, project = variants[name]
        table = project()
        loss = F.cross_entropy(states @ table.t(), targets)
        module.zero_grad()
        loss.backward()
        return table.detach(), {n: p.grad.clone() for n, p in module.projector.named_parameters()}

    for name in variants:  # warm-up (and compilation) outside the timing
        step(name)
    times: dict[str, list] = {name: [] for name in variants}
    order = list(variants)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            for _ in range(args.steps):
                start = time.perf_counter()
                step(name)
                times[name].append(time.perf_counter() - start)
    ref_table, ref_grads = step("float32")
    base_ms = statistics.median(times["float32"]) * 1e3
    print(f"{args.items} rows, {args.in_dim} -> {2 * args.hidden} -> {args.hidden}, 1 thread, "
          f"{args.rounds} rounds x {args.steps} steps, variants interleaved")
    print("| variant | ms/step (median) | vs float32 | row cosine min | worst gradient error (parameter) |")
    print("|---|--:|--:|--:|---|")
    for name in variants:
        ms = statistics.median(times[name]) * 1e3
        table, grads = step(name)
        cos = F.cosine_similarity(ref_table[1:], table[1:], dim=-1).min().item()
        # the last bias's CE gradient is zero up to round-off (softmax rows sum to one), so
        # a relative error is meaningless there: parameters with a near-zero gradient are skipped
        scale = max(g.norm().item() for g in ref_grads.values())
        errors = {n: ((grads[n] - ref_grads[n]).norm() / ref_grads[n].norm()).item()
                  for n in grads if ref_grads[n].norm().item() > 1e-4 * scale}
        worst = max(errors, key=errors.get)
        print(f"| {name} | {ms:.1f} | {base_ms / ms:.2f}x | {cos:.5f} | {errors[worst]:.4f} ({worst}) |")


if __name__ == "__main__":
    main()
