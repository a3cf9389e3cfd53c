"""Benchmark: how large is α·L_cal next to L_rank in a trained GenAIR model?

Claim checked: on Amazon_Beauty, GenAIR at α = 1e-3 and at α = 0 (and at α = 0.1) train to
the same validation curve (bench/RESULTS.md).  This measures why: on the training batches of
a trained GenAIR checkpoint, the ranking loss (the checkpoint's ``loss_type``: RecBole's CE
over all items, or BPR with one sampled negative) and the
calibration loss (paper Eq. 13-14, mean over ordered pairs of the batch's distinct target
items), their values and the norms of their gradients with respect to the projector's
parameters (the only item-side parameters GenAIR trains), then the ratios
``α·L_cal / L_rank`` and ``α·||∇L_cal|| / ||∇L_rank||`` over the paper's α grid.

Both losses come from the same step (one projected table, as in training), batch by batch,
in one process.  The checkpoint must have been trained with calibration (α > 0) so that it
carries the co-occurrence weights; the ratios are then reported for every α of the grid.

    python bench/bench_calibration_scale.py bench/out/beauty/saved/GenAIRGRU4Rec-<time>.pth [--batches 50]
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from recbole_genair.model.baselines.common import recbole_backbone
from recbole_genair.model.mixin import table_step
from recbole_genair.quick_start import load_data_and_model

ALPHAS = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1)


def grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None), torch.tensor(0.0))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a GenAIR checkpoint trained with calibration_alpha > 0")
    parser.add_argument("--batches", type=int, default=50, help="training batches to average over")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config, model, _dataset, train_data, _valid, _test = load_data_and_model(args.checkpoint)
    if getattr(model, "calibration", None) is None:
        parser.error(f"{args.checkpoint}: not a GenAIR model trained with calibration (alpha > 0)")
    backbone = recbole_backbone(type(model))
    params = [p for p in model.item_embedding.projector.parameters() if p.requires_grad]
    model.eval()  # no dropout: the two losses see the same network
    rank, cal, g_rank, g_cal, sizes = [], [], [], [], []
    for index, interaction in enumerate(train_data):
        if index >= args.batches:
            break
        interaction = interaction.to(model.device)
        with table_step(model.item_embedding):
            l_rank = backbone.calculate_loss(model, interaction)
            items = model.batch_target_items(interaction)
            l_cal = model.calibration(model.item_embedding.weight[items], items)
            g_rank.append(grad_norm(l_rank, params))
            g_cal.append(grad_norm(l_cal, params))
        rank.append(float(l_rank.detach()))
        cal.append(float(l_cal.detach()))
        sizes.append(int(items.numel()))
    n = len(rank)
    mean = statistics.fmean
    print(f"{config['model']} on {config['dataset']}, checkpoint trained with α = {config['calibration_alpha']}, "
          f"γ = {config['calibration_gamma']}, t = {config['calibration_t']}; {n} training batches of "
          f"{config['train_batch_size']} ({mean(sizes):.0f} distinct target items on average)")
    print(f"L_rank ({config['loss_type']}) mean {mean(rank):.4f}; L_cal mean {mean(cal):.5f}; "
          f"||∇L_rank|| {mean(g_rank):.4g}; ||∇L_cal|| {mean(g_cal):.4g} (w.r.t. the projector)")
    print("| α | α·L_cal / L_rank | α·‖∇L_cal‖ / ‖∇L_rank‖ |")
    print("|---|--:|--:|")
    ratio_value = mean(c / r for c, r in zip(cal, rank))
    ratio_grad = mean(c / r for c, r in zip(g_cal, g_rank))
    for alpha in ALPHAS:
        print(f"| {alpha:g} | {alpha * ratio_value:.2e} | {alpha * ratio_grad:.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
