"""Benchmark: what RecBole's import-time autograd anomaly detection cost every training step.

RecBole 1.2.1's ``sequential_recommender/sine.py`` calls ``torch.autograd.set_detect_anomaly(True)``
when imported, i.e. whenever any RecBole sequential model is; :mod:`recbole_genair.compat`
switches it back off (see its notes).  Claim checked: anomaly detection slowed a training step
of every model (base RecBole and GenAIR alike), and switching it off changes no number.

Per backbone x method, one model and one Adam, fed the same training batches; steps alternate
between anomaly detection on and off in rounds (``bench_model_cost.timed_rounds``, order
rotated per round), and the median step times give the ratio on / off.  One step =
``calculate_loss``, ``zero_grad``, ``backward``, ``Adam.step``.  Before timing, one batch's loss
and gradients are computed off, on, off again from the same weights (dropout re-seeded) and
the largest absolute differences printed: on vs off is zero, or of the order of off vs off
(the run-to-run float noise of GenAIR's backward, ~1e-8), which is the "changes no number"
half of the claim.

Run from the project root (1 thread, everything in one process):

    python bench/bench_anomaly_mode.py                                  # Amazon_Beauty, length 20
    python bench/bench_anomaly_mode.py --methods base,genair,llmesr --backbones SASRec --steps 12
"""
from __future__ import annotations

import argparse
import datetime
import logging
import warnings

import torch

from bench_model_cost import BACKBONES, build, first_batches, med, timed_rounds, train_step


def gradients(model, batch, anomaly: bool, seed: int = 0) -> tuple[float, list]:
    """Loss and gradients of one batch with anomaly detection ``anomaly`` (no optimizer step)."""
    torch.manual_seed(seed)
    with torch.autograd.set_detect_anomaly(anomaly):
        model.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
    return loss.item(), [p.grad.clone() if p.grad is not None else None for p in model.parameters()]


def difference(a: tuple, b: tuple) -> float:
    """Largest absolute difference between two (loss, gradients) results."""
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    if [g is None for g in grads_a] != [g is None for g in grads_b]:
        return float("inf")
    return max([abs(loss_a - loss_b)] + [(x - y).abs().max().item() for x, y in zip(grads_a, grads_b)
                                        if x is not None])


def bench(backbone: str, method: str, args) -> dict:
    _, _, train, _, model = build(backbone, args.dataset, method,
                                  {"MAX_ITEM_LIST_LENGTH": args.max_len, "show_progress": False,
                                   "state": "ERROR", "train_batch_size": args.batch_size})
    logging.disable(logging.CRITICAL)
    batches = first_batches(train, args.warmup + args.steps)
    model.train()
    off = gradients(model, batches[0], False)
    on = gradients(model, batches[0], True)
    again = gradients(model, batches[0], False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for b in batches[:args.warmup]:
        train_step(model, opt, b)

    def step(mode: str, batch) -> float:
        with torch.autograd.set_detect_anomaly(mode == "on"):
            return train_step(model, opt, batch)

    times = timed_rounds(step, ["on", "off"], batches[args.warmup:], args.rounds)
    return {"backbone": backbone, "method": method, "on": med(times["on"]), "off": med(times["off"]),
            "diff_on_off": difference(off, on), "diff_off_off": difference(off, again)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="Amazon_Beauty")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--methods", default="base,genair")
    parser.add_argument("--max_len", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {args.dataset}, "
          f"length {args.max_len}, batch {args.batch_size}, {args.steps} timed steps per model, 1 thread; "
          f"anomaly detection when this module started: {torch.is_anomaly_enabled()}")
    print("| backbone | method | ms/step, anomaly on | ms/step, off | on / off | max diff on vs off | off vs off |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for backbone in args.backbones.split(","):
        for method in args.methods.split(","):
            r = bench(backbone, method, args)
            print(f"| {backbone} | {method} | {r['on'] * 1000:.0f} | {r['off'] * 1000:.0f} | "
                  f"{r['on'] / r['off']:.2f} | {r['diff_on_off']:.1g} | {r['diff_off_off']:.1g} |", flush=True)


if __name__ == "__main__":
    main()
