"""Is model B better than model A on the same test users?  Per-user paired significance.

    python -m recbole_genair.significance A.pth B.pth [--split=test|valid] [--full_ranking] \\
        [--metrics=hit@10,ndcg@10] [--bootstrap=2000] [--seed=0] [--out=FILE.md]

The experiment runner's t-test compares *seeds* (training variance) and needs at least two
runs per cell.  This one compares two trained checkpoints on the *same* held-out users
(test-set sampling variance): each user's held-out item is ranked by both models against
the same candidates (the fixed 100 negatives, or full ranking, whichever the checkpoints
were trained under; both must agree — or, with ``--full_ranking``, every item), per-user HR@k / NDCG@k / MRR@k are paired by user
token, and the mean difference B − A gets a two-sided paired t-test
(``scipy.stats.ttest_rel``) and a seeded percentile-bootstrap 95% interval over users.
The per-user means equal RecBole's own metrics of the same checkpoint (up to score ties
at the cut-off).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_METRICS = ("hit@10", "ndcg@10")
PROTOCOL_KEYS = ("eval_negatives", "eval_negatives_seed", "eval_args")


def per_user_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-user value of ``hit@k``, ``ndcg@k`` or ``mrr@k`` from 0-based ranks."""
    name, _, k = metric.lower().partition("@")
    if not k.isdigit():
        raise ValueError(f"metric {metric!r}: expected name@k, e.g. ndcg@10")
    k = int(k)
    ranks = np.asarray(ranks, dtype=np.float64)
    inside = ranks < k
    if name == "hit":
        return inside.astype(np.float64)
    if name == "ndcg":
        return np.where(inside, 1.0 / np.log2(ranks + 2.0), 0.0)
    if name == "mrr":
        return np.where(inside, 1.0 / (ranks + 1.0), 0.0)
    raise ValueError(f"metric {metric!r}: supported are hit@k, ndcg@k, mrr@k")


@dataclass
class Comparison:
    metric: str
    n_users: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float


def compare(ranks_a: dict, ranks_b: dict, metrics: Sequence[str] = DEFAULT_METRICS,
            bootstrap: int = 2000, seed: int = 0) -> list[Comparison]:
    """Paired comparison of two ``{user token: rank}`` maps over the same users."""
    from scipy.stats import ttest_rel
    if set(ranks_a) != set(ranks_b):
        only_a, only_b = len(set(ranks_a) - set(ranks_b)), len(set(ranks_b) - set(ranks_a))
        raise ValueError(f"the two models were evaluated on different users ({only_a} only in A, "
                         f"{only_b} only in B): compare checkpoints of the same data set and split")
    users = sorted(ranks_a)
    a = np.array([ranks_a[u] for u in users])
    b = np.array([ranks_b[u] for u in users])
    rng = np.random.default_rng(seed)
    resample = rng.integers(0, len(users), size=(bootstrap, len(users))) if bootstrap else None
    out = []
    for metric in metrics:
        va, vb = per_user_metric(a, metric), per_user_metric(b, metric)
        delta = vb - va
        if resample is not None:
            boots = delta[resample].mean(axis=1)
            low, high = np.percentile(boots, [2.5, 97.5])
        else:
            low = high = float("nan")
        p = float(ttest_rel(vb, va).pvalue) if np.any(delta != delta[0]) else float("nan")
        out.append(Comparison(metric, len(users), float(va.mean()), float(vb.mean()), float(delta.mean()),
                              float(low), float(high), p))
    return out


def checkpoint_ranks(model_file: str, split: str = "test", full_ranking: bool = False) -> tuple[dict, dict, dict]:
    """``({user token: rank}, protocol settings, description)`` of one saved model.

    ``full_ranking`` ranks against every item instead of the checkpoint's fixed negatives
    (model selection stays what it was in training).
    """
    from recbole_genair.quick_start import load_data_and_model, make_trainer
    config, model, dataset, _train, valid_data, test_data = load_data_and_model(model_file)
    trainer = make_trainer(config, model, dataset)
    if full_ranking:
        trainer.set_negatives(None)
    users, ranks = trainer.user_ranks(test_data if split == "test" else valid_data)
    tokens = dataset.field2id_token[dataset.uid_field]
    protocol = {key: repr(config[key]) for key in PROTOCOL_KEYS
                if not (full_ranking and key.startswith("eval_negatives"))}
    protocol["dataset"] = config["dataset"]
    about = {"model": config["backbone"], "method": config["method"], "file": str(model_file)}
    return {str(tokens[u]): int(r) for u, r in zip(users, ranks)}, protocol, about


def render(comparisons: list[Comparison], label_a: str, label_b: str, split: str) -> str:
    from recbole_genair.experiments import pvalue_text
    lines = [f"Per-user paired comparison on the {split} split: A = {label_a}, B = {label_b}", "",
             "| metric | A | B | B − A | 95% bootstrap CI | paired t-test p | users |",
             "|---|--:|--:|--:|--:|--:|--:|"]
    for c in comparisons:
        lines.append(f"| {c.metric} | {c.mean_a:.4f} | {c.mean_b:.4f} | {c.diff:+.4f} | "
                     f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}] | {pvalue_text(c.p_value)} | {c.n_users:,} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbole_genair.significance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_a", help="checkpoint A (e.g. the base model)")
    parser.add_argument("model_b", help="checkpoint B (e.g. GenAIR)")
    parser.add_argument("--split", choices=("test", "valid"), default="test")
    parser.add_argument("--full_ranking", action="store_true",
                        help="rank against all items instead of the fixed sampled negatives")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    for path in (args.model_a, args.model_b):
        if not Path(path).is_file():
            parser.error(f"no such checkpoint: {path}")
    ranks_a, protocol_a, about_a = checkpoint_ranks(args.model_a, args.split, args.full_ranking)
    ranks_b, protocol_b, about_b = checkpoint_ranks(args.model_b, args.split, args.full_ranking)
    if protocol_a != protocol_b:
        differ = {k: (protocol_a[k], protocol_b[k]) for k in protocol_a if protocol_a[k] != protocol_b.get(k)}
        parser.error(f"the checkpoints were evaluated under different protocols: {differ}")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    text = render(compare(ranks_a, ranks_b, metrics, args.bootstrap, args.seed),
                  f"{about_a['model']}/{about_a['method']}", f"{about_b['model']}/{about_b['method']}",
                  args.split + (", full ranking" if args.full_ranking else ""))
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
