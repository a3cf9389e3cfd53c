"""Diagnostic: which part of a bfloat16 projector changes GenAIR's training (Amazon_Beauty, GRU4Rec).

Trains the GenAIR-GRU4Rec cell of the Beauty experiments (seed 2020, sequences of 20, one
thread) for ``--epochs`` epochs once per precision variant and prints the validation NDCG@10.
Each variant replaces ``ArchetypeItemEmbedding._project`` for its run; ``shipped`` is the
package's own ``projector_dtype: bfloat16`` (Linear maps in bf16, LayerNorm/GELU in float32),
``whole_autocast`` the first version of that option (autocast over the whole projector).

    python bench/bench_projector_precision.py                       # every variant, 1 epoch each
    python bench/bench_projector_precision.py --variants float32,whole_autocast --epochs 2

Needs ``python -m recbole_genair.datasets Amazon_Beauty``.  About 3-4 min per variant per epoch.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from recbole_genair.model import layers
from recbole_genair.quick_start import run

ORIGINAL = layers.ArchetypeItemEmbedding._project


def whole_autocast(self, features):
    with torch.autocast(features.device.type, dtype=torch.bfloat16):
        return self.projector(features).float()


def first_linear_bf16(self, features):
    with torch.autocast(features.device.type, dtype=torch.bfloat16):
        hidden = self.projector[0](features)
    return self.projector[1:](hidden.float())


def last_linear_bf16(self, features):
    hidden = self.projector[:-1](features)
    with torch.autocast(features.device.type, dtype=torch.bfloat16):
        return self.projector[-1](hidden).float()


def round_output(self, features):
    return self.projector(features).bfloat16().float()


def round_hidden(self, features):
    return self.projector[1:](self.projector[0](features).bfloat16().float())


VARIANTS = {  # name: (_project, projector_dtype)
    "float32": (ORIGINAL, "float32"),
    "shipped": (ORIGINAL, "bfloat16"),
    "whole_autocast": (whole_autocast, "float32"),
    "first_linear_bf16": (first_linear_bf16, "float32"),
    "last_linear_bf16": (last_linear_bf16, "float32"),
    "round_output": (round_output, "float32"),
    "round_hidden": (round_hidden, "float32"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    rows = []
    with tempfile.TemporaryDirectory() as saved:
        for name in names:
            project, dtype = VARIANTS[name]
            layers.ArchetypeItemEmbedding._project = project
            config = {"epochs": args.epochs, "MAX_ITEM_LIST_LENGTH": 20, "seed": args.seed, "torch_threads": 1,
                      "show_progress": False, "checkpoint_dir": saved, "state": "WARNING", "projector_dtype": dtype}
            start = time.time()
            result = run("GRU4Rec", "Amazon_Beauty", "genair", config_dict=config, saved=False)
            curve = ", ".join(f"{v:.4f}" for v in result["valid_curve"])
            rows.append(f"| {name} | {curve} | {time.time() - start:.0f} |")
            print(rows[-1], flush=True)
    layers.ArchetypeItemEmbedding._project = ORIGINAL
    print(f"\n| variant | valid NDCG@10 per epoch (GRU4Rec, Amazon_Beauty, seed {args.seed}) | seconds |\n|---|---|--:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
