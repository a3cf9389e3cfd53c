"""Analysis: where a trained model's preference for popular items lives.

Claim (bench/RESULTS.md, "Why GenAIR's full-ranking lists concentrate on popular items"):
GenAIR's item rows are a function of the frozen archetype features, so an item's own
popularity cannot be stored in its row; BERT4Rec still has one free number per item, its
output bias, and GenAIR-BERT4Rec puts popularity there: the bias spreads several times wider
than in the ID-table model, and scaling it down at inference moves the top-10 lists off the
popular items.  Removing the item-norm differences (cosine-style scores) does not.

For each checkpoint (one process, 1 torch thread, the checkpoints' own data and fixed
negatives), the script prints

* how the item rows and the output bias (BERT4Rec only) relate to popularity: Spearman
  correlation with the item's training interactions; how alike the rows are (nearest other
  row's cosine), as they are and without their common part (the mean row), and how alike
  the archetype features they are projected from are (GenAIR only);
* the user-independent part of the score, g(i) = mean user vector · e_i + b_i: its Spearman
  correlation with popularity and the median over users of corr(score_u, g) (1 = every user
  gets the same ranking);
* where the test target lands in the full ranking (median rank, share under 10 ... 1000): a
  model can rank targets better overall (the 100-negative protocol samples the bulk of the
  list) and still worse at the very top;
* how many top-10 slots hold the target's 20 nearest items by archetype-feature cosine
  ("semantic crowding"; the features come from the first GenAIR checkpoint given, so list it
  first to get the line for the others too);
* HR@10 / NDCG@10 overall and on popular / long-tail targets (the 20 % / 80 % Pareto split of
  ``significance --by_popularity``), the popular share of the top-10 slots and the distinct
  items over all top-10 lists, under full ranking and the 100 fixed negatives, on valid and
  test, at each ``--bias_scales`` factor (``1`` = the trained model) and, with
  ``--norm_powers``, with item rows divided by ``||e_i||^p`` (rescaled to the mean norm; the
  changed table is used everywhere the model reads it, sequence inputs as well as scores) and,
  with ``--user_centering``, with c × the mean test user vector subtracted from every user
  vector; ratios are against the trained model in the same run.

Run from the project root on checkpoints the experiment runner saved:

    python bench/bench_popularity.py bench/out/beauty/saved/GenAIRBERT4Rec-*.pth \\
        bench/out/beauty/saved/BERT4Rec-*.pth [--bias_scales 1,0.5,0] [--norm_powers 1] [--user_centering 1,0.5] \\
        [--splits valid,test]
"""
from __future__ import annotations

import argparse
import contextlib
from typing import Iterator

import numpy as np
import torch
from scipy.stats import spearmanr

from recbole_genair.data.cooccurrence import training_item_counts
from recbole_genair.data.dataset import interaction_columns
from recbole_genair.model.baselines.llmesr import nearest_users
from recbole_genair.quick_start import load_data_and_model, make_trainer
from recbole_genair.significance import TOP_K, per_user_metric, popular_items

NEIGHBOURS = 20  # the target's nearest items by archetype-feature cosine, for the crowding check
RANK_CUTS = (10, 50, 100, 500, 1000)
USER_SAMPLE = 3000  # users whose full score rows are compared with the user-independent score
COLUMNS = {"HR": "{:.4f}", "NDCG": "{:.4f}", "NDCG popular": "{:.4f}", "NDCG long-tail": "{:.4f}",
           "top-10 popular": "{:.1%}", "distinct": "{:,.0f}"}


@contextlib.contextmanager
def patched_gather(model, transform) -> Iterator[None]:
    """Pass every sequence representation the model scores with through ``transform``.

    RecBole's SASRec, GRU4Rec and BERT4Rec all pick the last position's output with
    ``gather_indexes`` before scoring (``predict`` and ``full_sort_predict`` alike); the
    block wraps it.
    """
    original = model.gather_indexes
    model.gather_indexes = lambda *args, **kwargs: transform(original(*args, **kwargs))
    try:
        yield
    finally:
        del model.gather_indexes  # back to the class method


def keep(captured: list):
    """A ``patched_gather`` transform that records the representations and leaves them as they are."""
    def record(out):
        captured.append(out.detach().double().cpu().numpy())
        return out
    return record


@contextlib.contextmanager
def scaled_bias(model, scale: float) -> Iterator[None]:
    """Multiply BERT4Rec's per-item output bias by ``scale`` during the block."""
    bias = model.output_bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.mul_(scale)
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


@contextlib.contextmanager
def norm_divided_rows(model, n_items: int, power: float) -> Iterator[None]:
    """Divide item rows by ``||e_i||^power`` (rescaled to the mean norm) during the block,
    in the table itself, so sequence inputs and scores both see it."""
    def divide(rows):
        norms = rows[1:n_items].norm(dim=1, keepdim=True)
        rows[1:n_items] = rows[1:n_items] / norms ** power * norms.mean() ** power
        return rows

    table = model.item_embedding
    compute = getattr(table, "compute_table", None)
    if compute is not None:  # a derived table (GenAIR, the baselines): wrap its computation
        table.compute_table = lambda: divide(compute().clone())
        table.train(False)  # drop the cached table
        try:
            yield
        finally:
            del table.compute_table
            table.train(False)
    else:  # an ID table
        saved = table.weight.detach().clone()
        with torch.no_grad():
            divide(table.weight)
        try:
            yield
        finally:
            with torch.no_grad():
                table.weight.copy_(saved)


def variant_scores(model, n_items: int, bias_scale: float, norm_power: float,
                   user_shift: torch.Tensor | None) -> contextlib.ExitStack:
    """All of one variant's modifications, undone together when the block ends."""
    stack = contextlib.ExitStack()
    if bias_scale != 1.0:
        stack.enter_context(scaled_bias(model, bias_scale))
    if norm_power:
        stack.enter_context(norm_divided_rows(model, n_items, norm_power))
    if user_shift is not None:
        stack.enter_context(patched_gather(model, lambda out: out - user_shift.to(out)))
    return stack


def feature_neighbours(features: torch.Tensor) -> np.ndarray:
    """Each item's ``NEIGHBOURS`` nearest other items (never padding) by archetype-feature cosine."""
    items = torch.ones(len(features), dtype=torch.bool)
    items[0] = False
    return nearest_users(features.detach().float(), items, NEIGHBOURS).numpy()


def nearest_row(rows) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest other row by cosine: (that cosine, that row's index)."""
    x = torch.nn.functional.normalize(torch.as_tensor(rows, dtype=torch.float32), dim=1)
    nearest = nearest_users(x, torch.ones(len(x), dtype=torch.bool), 1)[:, 0]
    return (x * x[nearest]).sum(1).numpy(), nearest.numpy()


def nearest_row_cosine(rows: np.ndarray) -> np.ndarray:
    """Each row's largest cosine with any other row."""
    return nearest_row(rows)[0]


def ranking_row(ranked: tuple, head: np.ndarray) -> dict:
    """The table's columns from one ``user_ranks(..., top_k=TOP_K)`` result."""
    _users, items, ranks, top = ranked
    hit, ndcg = per_user_metric(ranks, f"hit@{TOP_K}"), per_user_metric(ranks, f"ndcg@{TOP_K}")
    popular = head[items]
    return {"HR": hit.mean(), "NDCG": ndcg.mean(), "NDCG popular": ndcg[popular].mean(),
            "NDCG long-tail": ndcg[~popular].mean(), "top-10 popular": head[top].mean(),
            "distinct": float(len(np.unique(top)))}


def describe(model_file: str, bias_scales: list[float], norm_powers: list[float], centerings: list[float],
             splits: list[str], neighbours: dict[str, np.ndarray]) -> None:
    """Print one checkpoint's lines and table; ``neighbours`` (data set → each item's nearest
    items by feature cosine) is filled by the first GenAIR checkpoint and read by the rest."""
    config, model, dataset, _train, valid_data, test_data = load_data_and_model(model_file)
    model.eval()
    counts = np.asarray(training_item_counts(*interaction_columns(dataset), n_items=dataset.item_num), float)
    head = popular_items(counts)
    print(f"\n## {config['backbone']} / {config['method']} (seed {config['seed']}): {model_file}\n")

    sampled = make_trainer(config, model, dataset)  # the checkpoint's fixed negatives
    full = make_trainer(config, model, dataset)
    full.set_negatives(None)
    captured: list = []
    with patched_gather(model, keep(captured)):
        test_full = full.user_ranks(test_data, top_k=TOP_K)  # also the as-trained test row below
    _users, targets, ranks, top = test_full
    users = np.concatenate(captured)
    with torch.no_grad():
        rows = model.item_embedding.weight[1:dataset.item_num].double().cpu().numpy()
    bias = getattr(model, "output_bias", None)
    bias = None if bias is None else bias.detach().double().cpu().numpy()[1:dataset.item_num]
    count = counts[1:]
    norms = np.linalg.norm(rows, axis=1)
    general = rows @ users.mean(0) + (0.0 if bias is None else bias)
    sample = np.random.default_rng(0).choice(len(users), min(USER_SAMPLE, len(users)), replace=False)
    scores = users[sample] @ rows.T + (0.0 if bias is None else bias)
    agreement = np.median([np.corrcoef(s, general)[0, 1] for s in scores])
    print(f"- item rows: mean norm {norms.mean():.3f}, Spearman(norm, popularity) {spearmanr(norms, count)[0]:+.3f}; "
          f"items whose nearest other row has cosine > 0.9: {np.mean(nearest_row_cosine(rows) > 0.9):.1%}")
    centred = rows - rows.mean(0)
    print(f"- the rows' common part: mean row norm {np.linalg.norm(rows.mean(0)):.3f}; rows minus it: mean norm "
          f"{np.linalg.norm(centred, axis=1).mean():.3f}, items whose nearest other centred row has cosine > 0.9: "
          f"{np.mean(nearest_row_cosine(centred) > 0.9):.1%}")
    if bias is None:
        print("- output bias: none (this backbone scores with the item rows only)")
    else:
        print(f"- output bias: std {bias.std():.3f} (score std per user, median {np.median(scores.std(1)):.3f}), "
              f"Spearman(bias, popularity) {spearmanr(bias, count)[0]:+.3f}")
    print(f"- user-independent score g = mean user · e + b: Spearman(g, popularity) "
          f"{spearmanr(general, count)[0]:+.3f}; median per-user corr(score, g) {agreement:.3f}")
    print(f"- test target's full-ranking rank: median {np.median(ranks):,.0f}; "
          + ", ".join(f"< {k}: {np.mean(ranks < k):.3f}" for k in RANK_CUTS))
    features = getattr(model.item_embedding, "features", None)
    if features is not None:
        neighbours[config["dataset"]] = feature_neighbours(features)
        inputs = features[1:dataset.item_num].detach().double().cpu().numpy()
        print(f"- archetype features (the projector's input): items whose nearest other item has cosine > 0.9: "
              f"{np.mean(nearest_row_cosine(inputs) > 0.9):.1%}; centred: "
              f"{np.mean(nearest_row_cosine(inputs - inputs.mean(0)) > 0.9):.1%}")
    if config["dataset"] in neighbours:
        near = neighbours[config["dataset"]][targets]
        held = np.array([np.isin(t, n).sum() for t, n in zip(top, near)])
        print(f"- top-{TOP_K} slots held by the target's {NEIGHBOURS} nearest items by archetype-feature "
              f"cosine: {held.mean() / TOP_K:.2%}; users with at least one: {np.mean(held > 0):.2%}")
    print()

    mean_user = torch.as_tensor(users.mean(0))
    variants = [(f"bias × {s:g}", s, 0.0, 0.0) for s in bias_scales if bias is not None or s == 1.0]
    variants += [(f"rows / norm^{p:g}", 1.0, p, 0.0) for p in norm_powers if p]
    variants += [(f"users − {c:g}·mean user", 1.0, 0.0, c) for c in centerings if c]
    print("| split | candidates | variant | " + " | ".join(COLUMNS) + " | long-tail NDCG ratio |")
    print("|---|---|---|" + "--:|" * (len(COLUMNS) + 1))
    for split in splits:
        data = valid_data if split == "valid" else test_data
        for candidates, trainer in (("all items", full), ("100 fixed negatives", sampled)):
            reference = None
            for name, scale, power, centering in variants:
                if split == "test" and trainer is full and (scale, power, centering) == (1.0, 0.0, 0.0):
                    ranked = test_full
                else:
                    shift = centering * mean_user if centering else None
                    with variant_scores(model, dataset.item_num, scale, power, shift):
                        ranked = trainer.user_ranks(data, top_k=TOP_K)
                row = ranking_row(ranked, head)
                reference = reference or row
                cells = [fmt.format(row[c]) for c, fmt in COLUMNS.items()]
                ratio = row["NDCG long-tail"] / reference["NDCG long-tail"] if reference["NDCG long-tail"] else float("nan")
                print(f"| {split} | {candidates} | {name} | " + " | ".join(cells) + f" | {ratio:.2f}x |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--bias_scales", default="1,0.5,0", help="output-bias factors (BERT4Rec); 1 = as trained")
    parser.add_argument("--norm_powers", default="", help="also divide item rows by ||e||^p, e.g. 1")
    parser.add_argument("--user_centering", default="",
                        help="also subtract c × the mean test user vector from every user vector, e.g. 1,0.5 "
                             "(c = 1 removes the user-independent score g except the bias)")
    parser.add_argument("--splits", default="test")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    scales = [float(s) for s in args.bias_scales.split(",") if s]
    if 1.0 in scales:
        scales.remove(1.0)
    powers = [float(p) for p in args.norm_powers.split(",") if p]
    centerings = [float(c) for c in args.user_centering.split(",") if c]
    neighbours: dict[str, np.ndarray] = {}
    for model_file in args.checkpoints:
        describe(model_file, [1.0] + scales, powers, centerings, args.splits.split(","), neighbours)


if __name__ == "__main__":
    main()
