"""How much the fixed-negatives fix of 2026-12-04 moves recorded results.

Until then ``fixed_negatives`` read a user's items from the *built* sequential data set, whose
rows hold only targets (RecBole's data augmentation), so each user's first item could be drawn
as one of the 100 "negatives" (0.84 % of Amazon_Beauty users, 6 % of the test copy of
ml-100k).  The draw for every other user is unchanged.  For each checkpoint given, this
re-evaluates the saved best model on valid and test under both negative sets (one process,
1 torch thread) and prints HR@10 / NDCG@10 and the difference.

    python bench/bench_negatives_history.py CHECKPOINT.pth [CHECKPOINT.pth ...]
"""
from __future__ import annotations

import argparse

import torch

from recbole_genair.quick_start import load_data_and_model, make_trainer
from recbole_genair.trainer import draw_negatives

METRICS = ("hit@10", "ndcg@10")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| checkpoint | split | HR@10 old | HR@10 fixed | Δ | NDCG@10 old | NDCG@10 fixed | Δ | users changed |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for path in args.checkpoints:
        config, model, dataset, _train, valid, test = load_data_and_model(path)
        trainer = make_trainer(config, model, dataset)
        fixed = trainer.eval_negatives.cpu()
        targets_only = draw_negatives(dataset.inter_feat[dataset.uid_field].numpy(),
                                      dataset.inter_feat[dataset.iid_field].numpy(), dataset.user_num,
                                      dataset.item_num, dataset.field2id_token[dataset.uid_field],
                                      int(config["eval_negatives"]), int(config["eval_negatives_seed"]))
        changed = int((fixed != targets_only).any(1)[1:].sum())
        for split, data in (("valid", valid), ("test", test)):
            results = {}
            for name, negatives in (("old", targets_only), ("fixed", fixed)):
                trainer.set_negatives(negatives)
                results[name] = trainer.evaluate(data, load_best_model=False, show_progress=False)
            cells = []
            for metric in METRICS:
                old, new = float(results["old"][metric]), float(results["fixed"][metric])
                cells += [f"{old:.4f}", f"{new:.4f}", f"{new - old:+.4f}"]
            print(f"| {config['model']} {path.split('/')[-3]} | {split} | " + " | ".join(cells)
                  + f" | {changed} of {dataset.user_num - 1} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
