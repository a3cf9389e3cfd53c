"""Is model B better than model A on the same test users?  Per-user paired significance.

    python -m recbole_genair.significance A.pth B.pth [--split=test|valid] [--full_ranking] \\
        [--metrics=hit@10,ndcg@10] [--by_popularity] [--bootstrap=2000] [--seed=0] [--out=FILE.md]

The experiment runner's t-test compares *seeds* (training variance) and needs at least two
runs per cell.  This one compares two trained checkpoints on the *same* held-out users
(test-set sampling variance): each user's held-out item is ranked by both models against
the same candidates (the fixed 100 negatives, or full ranking, whichever the checkpoints
were trained under; both must agree — or, with ``--full_ranking``, every item), per-user HR@k / NDCG@k / MRR@k are paired by user
token, and the mean difference B − A gets a two-sided paired t-test
(``scipy.stats.ttest_rel``) and a seeded percentile-bootstrap 95% interval over users.
The per-user means equal RecBole's own metrics of the same checkpoint (up to score ties
at the cut-off).

``--by_popularity`` repeats the comparison within two groups of users, split by how popular
their held-out item is in the training sequences (:func:`popular_items`): *popular* = the
20% most-interacted items, *long-tail* = the other 80% (the Pareto split of LLM-ESR's
long-tail analysis); it also reports how popular the items in each model's top-10 lists
are and how many distinct items those lists cover.  Where a gain comes from — popular or long-tail targets — explains
why a model can win on sampled negatives and lose under full ranking.
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
HEAD_SHARE = 0.2


def popular_items(counts: np.ndarray, head_share: float = HEAD_SHARE) -> np.ndarray:
    """Boolean mask over item ids: the ``head_share`` most-interacted items (id 0 = padding excluded).

    ``counts[i]`` = training interactions of item ``i``; the head is the first
    ``ceil(head_share · (n - 1))`` items by count, ties broken by the smaller id.
    """
    counts = np.asarray(counts)
    if not 0 < head_share < 1:
        raise ValueError(f"head_share must lie in (0, 1), got {head_share}")
    ids = np.arange(1, len(counts))
    order = ids[np.lexsort((ids, -counts[1:]))]
    head = np.zeros(len(counts), dtype=bool)
    head[order[:int(np.ceil(head_share * len(ids)))]] = True
    return head


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


@dataclass
class Evaluated:
    """One checkpoint's held-out ranks: ``{user token: rank}``, ``{user token: popular target?}``."""

    ranks: dict
    popular: dict
    protocol: dict
    about: dict
    top_popular_share: float = float("nan")  # mean share of popular items in the users' top-k lists
    top_distinct: int = 0                    # distinct items over all users' top-k lists


TOP_K = 10

# Config keys that name the model or do not change it; together with the experiment runner's
# LOCATION_KEYS (except the feature file, which tells feature sets apart) and NON_RESULT_KEYS
# (except the seed) they never label a model.
INCIDENTAL_KEYS = frozenset({"shuffle", "benchmark_filename", "model", "MODEL_TYPE", "MODEL_INPUT_TYPE",
                             "backbone", "method"})
MAX_LABEL_KEYS = 4


def model_settings(config) -> dict:
    """A checkpoint's configuration as ``{key: repr(value)}`` (what labels are told apart by)."""
    from recbole_genair.run_settings import LOCATION_KEYS, NON_RESULT_KEYS
    skip = INCIDENTAL_KEYS | (LOCATION_KEYS - {"archetype_feature_file"}) | (NON_RESULT_KEYS - {"seed"})
    return {k: repr(v) for k, v in config.final_config_dict.items() if k not in skip}


def labels_for(a: "Evaluated", b: "Evaluated") -> tuple[str, str]:
    """``backbone/method`` for each checkpoint, plus the settings both have but set differently
    (e.g. ``GRU4Rec/genair (calibration_alpha=0.0)``), so two runs of one method stay apart.
    Between two methods, keys only one has are that method's own (its name already says so);
    within one method, a key only one has is an option the other checkpoint predates
    (shown as ``unset``)."""
    sa, sb = a.about.get("settings", {}), b.about.get("settings", {})
    keys = set(sa) | set(sb) if a.about.get("method") == b.about.get("method") else set(sa) & set(sb)
    differ = sorted(k for k in keys if sa.get(k) != sb.get(k))

    def label(e: "Evaluated", settings: dict) -> str:
        text = f"{e.about['model']}/{e.about['method']}"
        shown = [f"{k}={settings.get(k, 'unset')}" for k in differ[:MAX_LABEL_KEYS]]
        if len(differ) > MAX_LABEL_KEYS:
            shown.append(f"+{len(differ) - MAX_LABEL_KEYS} more")
        return f"{text} ({', '.join(shown)})" if shown else text

    return label(a, sa), label(b, sb)


def checkpoint_ranks(model_file: str, split: str = "test", full_ranking: bool = False) -> Evaluated:
    """Ranks of one saved model's held-out items, with their popularity group.

    ``full_ranking`` ranks against every item instead of the checkpoint's fixed negatives
    (model selection stays what it was in training).
    """
    from recbole_genair.data.cooccurrence import training_item_counts
    from recbole_genair.data.dataset import interaction_columns
    from recbole_genair.quick_start import load_data_and_model, make_trainer
    config, model, dataset, _train, valid_data, test_data = load_data_and_model(model_file)
    trainer = make_trainer(config, model, dataset)
    if full_ranking:
        trainer.set_negatives(None)
    users, items, ranks, top = trainer.user_ranks(test_data if split == "test" else valid_data, top_k=TOP_K)
    head = popular_items(training_item_counts(*interaction_columns(dataset), n_items=dataset.item_num))
    tokens = [str(t) for t in dataset.field2id_token[dataset.uid_field]]
    protocol = {key: repr(config[key]) for key in PROTOCOL_KEYS
                if not (full_ranking and key.startswith("eval_negatives"))}
    protocol["dataset"] = config["dataset"]
    about = {"model": config["backbone"], "method": config["method"], "file": str(model_file),
             "settings": model_settings(config)}
    return Evaluated(ranks={tokens[u]: int(r) for u, r in zip(users, ranks)},
                     popular={tokens[u]: bool(head[i]) for u, i in zip(users, items)},
                     protocol=protocol, about=about, top_popular_share=float(head[top].mean()),
                     top_distinct=int(len(np.unique(top))))


def render(comparisons: list[Comparison], label_a: str, label_b: str, split: str, group: str = "") -> str:
    from recbole_genair.experiments import pvalue_text
    lines = [f"Per-user paired comparison on the {split} split{group}: A = {label_a}, B = {label_b}", "",
             "| metric | A | B | B − A | 95% bootstrap CI | paired t-test p | users |",
             "|---|--:|--:|--:|--:|--:|--:|"]
    for c in comparisons:
        lines.append(f"| {c.metric} | {c.mean_a:.4f} | {c.mean_b:.4f} | {c.diff:+.4f} | "
                     f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}] | {pvalue_text(c.p_value)} | {c.n_users:,} |")
    return "\n".join(lines) + "\n"


def render_top_lists(models: Sequence[tuple[str, Evaluated]], split: str) -> str:
    lines = [f"What the models recommend ({split}; top-{TOP_K} list of every user)", "",
             f"| model | popular items in the top {TOP_K} | distinct items over all top-{TOP_K} lists |",
             "|---|--:|--:|"]
    lines += [f"| {label} | {e.top_popular_share:.1%} | {e.top_distinct:,} |" for label, e in models]
    return "\n".join(lines) + "\n"


def by_popularity(a: Evaluated, b: Evaluated) -> list[tuple[str, dict, dict]]:
    """``[(label, ranks A, ranks B)]`` for users with a popular and with a long-tail target."""
    if a.popular != b.popular:
        raise ValueError("the two checkpoints hold out different items: compare checkpoints of the same split")
    groups = []
    for flag, name in ((True, f"popular targets (top {HEAD_SHARE:.0%} of items by training interactions)"),
                       (False, f"long-tail targets (other {1 - HEAD_SHARE:.0%} of items)")):
        users = [u for u, p in a.popular.items() if p is flag]
        groups.append((name, {u: a.ranks[u] for u in users}, {u: b.ranks[u] for u in users}))
    return groups


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbole_genair.significance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_a", help="checkpoint A (e.g. the base model)")
    parser.add_argument("model_b", help="checkpoint B (e.g. GenAIR)")
    parser.add_argument("--split", choices=("test", "valid"), default="test")
    parser.add_argument("--full_ranking", action="store_true",
                        help="rank against all items instead of the fixed sampled negatives")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
    parser.add_argument("--by_popularity", action="store_true",
                        help="also compare within users whose held-out item is popular / long-tail")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    for path in (args.model_a, args.model_b):
        if not Path(path).is_file():
            parser.error(f"no such checkpoint: {path}")
    a = checkpoint_ranks(args.model_a, args.split, args.full_ranking)
    b = checkpoint_ranks(args.model_b, args.split, args.full_ranking)
    if a.protocol != b.protocol:
        differ = {k: (a.protocol[k], b.protocol[k]) for k in a.protocol if a.protocol[k] != b.protocol.get(k)}
        parser.error(f"the checkpoints were evaluated under different protocols: {differ}")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    labels = labels_for(a, b)
    split = args.split + (", full ranking" if args.full_ranking else "")
    text = render(compare(a.ranks, b.ranks, metrics, args.bootstrap, args.seed), *labels, split)
    if args.by_popularity:
        text += "\n" + render_top_lists([(f"A = {labels[0]}", a), (f"B = {labels[1]}", b)], split)
        for name, ranks_a, ranks_b in by_popularity(a, b):
            if not ranks_a:
                text += f"\nNo {args.split} user has {name}.\n"
                continue
            text += "\n" + render(compare(ranks_a, ranks_b, metrics, args.bootstrap, args.seed), *labels, split,
                                  group=f", {name}")
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
