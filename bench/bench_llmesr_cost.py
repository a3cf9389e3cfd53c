"""Benchmark: what LLM-ESR's self-distillation costs per training step, by which samples it distils.

Claim checked: distilling only each user's latest training input (``llmesr_distill_on:
latest``, the default; the reference distils once per user and epoch) makes an LLM-ESR epoch
several times cheaper than distilling every RecBole prefix (``all_prefixes``), because the
neighbour guide — ``N`` neighbours' sequences encoded with both views, without gradient —
is computed for ~1/6 (Amazon_Beauty: 131,413 training samples of 22,363 users) of a batch's samples instead of all of them.

Variants, each with its own Adam, fed the SAME training batches (taken from the base loader;
the item id maps are asserted identical): plain RecBole ``base``; ``llmesr`` with ``latest``;
``llmesr`` with ``all_prefixes``; ``llmesr`` with ``llmesr_alpha: 0`` (the dual view alone,
no distillation).  One step = ``calculate_loss``, ``zero_grad``, ``backward``, ``Adam.step``
(:func:`bench_model_cost.train_step`).  After warm-up the variants alternate in rounds
(order rotated per round); the median step time gives the ratios.  Also printed: the share of
each batch's samples that ``latest`` distils.

Run from the project root (all variants in one process, 1 thread):

    python bench/bench_llmesr_cost.py                          # Amazon_Beauty, GRU4Rec, length 20
    python bench/bench_llmesr_cost.py --backbones GRU4Rec,SASRec --steps 30
"""
from __future__ import annotations

import argparse
import datetime
import logging
import statistics
import warnings

import torch

from bench_model_cost import build, first_batches, timed_rounds, train_step


def bench_backbone(backbone: str, args, extra: dict) -> dict:
    variants = {"base": ("base", {}),
                "llmesr latest": ("llmesr", {"llmesr_distill_on": "latest"}),
                "llmesr all_prefixes": ("llmesr", {"llmesr_distill_on": "all_prefixes"}),
                "llmesr α=0": ("llmesr", {"llmesr_alpha": 0.0})}
    models, tokens, loader = {}, {}, None
    for name, (method, overrides) in variants.items():
        config, data, train, _, model = build(backbone, args.dataset, method, {**extra, **overrides})
        models[name] = model
        tokens[name] = list(data.field2id_token[config["ITEM_ID_FIELD"]])
        if loader is None:
            loader = train
    assert all(t == tokens["base"] for t in tokens.values()), "item id maps differ"
    need = args.warmup + args.steps
    batches = first_batches(loader, need)
    latest = models["llmesr latest"]
    share = sum(len(latest.latest_inputs(b)) for b in batches) / sum(len(b) for b in batches)
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    for k, m in models.items():
        m.train()
        for b in batches[:args.warmup]:
            train_step(m, opts[k], b)
    times = timed_rounds(lambda k, b: train_step(models[k], opts[k], b), list(models),
                         batches[args.warmup:], args.rounds)
    steps = {k: statistics.median(v) for k, v in times.items()}
    print(f"  {backbone}: " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in steps.items())
          + f"; latest distils {100 * share:.1f} % of samples", flush=True)
    return {"backbone": backbone, "steps": steps, "share": share, "n": len(times["base"]),
            "batches_per_epoch": len(loader)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="Amazon_Beauty")
    parser.add_argument("--backbones", default="GRU4Rec")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max_len", type=int, default=20, help="MAX_ITEM_LIST_LENGTH (the Beauty runs' 20)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    extra = {"torch_threads": 1, "show_progress": False, "MAX_ITEM_LIST_LENGTH": args.max_len,
             "eval_negatives": 0}
    print(f"# LLM-ESR step cost by distilled samples — {args.dataset}, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, "
          f"torch {torch.__version__}, 1 thread, {args.steps} timed steps per variant", flush=True)
    results = [bench_backbone(b, args, extra) for b in args.backbones.split(",")]
    print("\n| backbone | base ms/step | LLM-ESR latest | ratio | LLM-ESR all_prefixes | ratio | "
          "LLM-ESR α=0 | ratio | all_prefixes / latest | samples distilled by latest |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in results:
        s = r["steps"]
        b = s["base"]
        print(f"| {r['backbone']} | {1e3 * b:.1f} | {1e3 * s['llmesr latest']:.1f} | {s['llmesr latest'] / b:.2f} | "
              f"{1e3 * s['llmesr all_prefixes']:.1f} | {s['llmesr all_prefixes'] / b:.2f} | "
              f"{1e3 * s['llmesr α=0']:.1f} | {s['llmesr α=0'] / b:.2f} | "
              f"{s['llmesr all_prefixes'] / s['llmesr latest']:.2f} | {100 * r['share']:.1f} % |")
    print(f"\n{results[0]['n']} timed steps per variant; {results[0]['batches_per_epoch']} batches per epoch.")


if __name__ == "__main__":
    main()
