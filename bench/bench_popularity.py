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
  correlation with the item's training interactions;
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
  changed table is used everywhere the model reads it, sequence inputs as well as scores);
  ratios are against the trained model in the same run.

Run from the project root on checkpoints the experiment runner saved:

    python bench/bench_popularity.py bench/out/beauty/saved/GenAIRBERT4Rec-*.pth \\
        bench/out/beauty/saved/BERT4Rec-*.pth [--bias_scales 1,0.5,0] [--norm_powers 1] [--splits valid,test]
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
from recbole_genair.quick_start import load_data_and_model, make_trainer
from recbole_genair.significance import TOP_K, per_user_metric, popular_items

NEIGHBOURS = 20  # the target's nearest items by archetype-feature cosine, for the crowding check
RANK_CUTS = (10, 50, 100, 500, 1000)
USER_SAMPLE = 3000  # users whose full score rows are compared with the user-independent score
COLUMNS = {"HR": "{:.4f}", "NDCG": "{:.4f}", "NDCG popular": "{:.4f}", "NDCG long-tail": "{:.4f}",
           "top-10 popular": "{:.1%}", "distinct": "{:,.0f}"}


@contextlib.contextmanager
def capture_user_vectors(model) -> Iterator[list]:
    """Collect the sequence representation each ``full_sort_predict`` scores with.

    RecBole's SASRec, GRU4Rec and BERT4Rec all pick the last position's output with
    ``gather_indexes`` before scoring; the probe wraps it for the duration of the block.
    """
    captured: list = []
    original = model.gather_indexes

    def probe(*args, **kwargs):
        out = original(*args, **kwargs)
        captured.append(out.detach().double().cpu().numpy())
        return out

    model.gather_indexes = probe
    try:
        yield captured
    finally:
        del model.gather_indexes  # back to the class method


@contextlib.contextmanager
def modified_scores(model, n_items: int, bias_scale: float = 1.0, norm_power: float = 0.0,
                    user_shift: torch.Tensor | None = None) -> Iterator[None]:
    """Scale the output bias, divide item rows by ``||e_i||^norm_power`` and/or subtract
    ``user_shift`` from every sequence representation during the block."""
    if user_shift is not None:
        gather = model.gather_indexes

        def shifted(*args, **kwargs):
            return gather(*args, **kwargs) - user_shift.to(args[0])
        model.gather_indexes = shifted
    bias = getattr(model, "output_bias", None)
    saved_bias = None if bias is None else bias.detach().clone()
    table = model.item_embedding
    compute = getattr(table, "compute_table", None)
    saved_weight = None
    if norm_power:
        if compute is not None:
            def normalised(original=compute):
                rows = original().clone()
                norms = rows[1:n_items].norm(dim=1, keepdim=True)
                rows[1:n_items] = rows[1:n_items] / norms ** norm_power * norms.mean() ** norm_power
                return rows
            table.compute_table = normalised
            table.train(False)  # drop the cached table
        else:
            saved_weight = table.weight.detach().clone()
            with torch.no_grad():
                norms = table.weight[1:n_items].norm(dim=1, keepdim=True)
                table.weight[1:n_items] /= norms ** norm_power / norms.mean() ** norm_power
    if bias is not None:
        with torch.no_grad():
            bias.mul_(bias_scale)
    try:
        yield
    finally:
        if bias is not None:
            with torch.no_grad():
                bias.copy_(saved_bias)
        if compute is not None and norm_power:
            del table.compute_table
            table.train(False)
        if saved_weight is not None:
            with torch.no_grad():
                table.weight.copy_(saved_weight)
        if user_shift is not None:
            del model.gather_indexes


_neighbours: dict[str, np.ndarray] = {}  # data set → [n_items, NEIGHBOURS], from the first GenAIR checkpoint


def cosine_blocks(x: torch.Tensor, block: int = 2048) -> Iterator[torch.Tensor]:
    """Row blocks of the cosine-similarity matrix of ``x``'s rows, each row's own entry set to -2."""
    x = torch.nn.functional.normalize(x.detach().float(), dim=1)
    for start in range(0, len(x), block):
        sim = x[start:start + block] @ x.T
        sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = -2.0
        yield sim


def feature_neighbours(features: torch.Tensor) -> np.ndarray:
    """Each item's ``NEIGHBOURS`` nearest other items (never padding) by archetype-feature cosine."""
    blocks = []
    for sim in cosine_blocks(features):
        sim[:, 0] = -2.0
        blocks.append(sim.topk(NEIGHBOURS, dim=1).indices)
    return torch.cat(blocks).numpy()


def nearest_row_cosine(rows: np.ndarray) -> np.ndarray:
    """Each row's largest cosine with any other row."""
    return torch.cat([sim.max(1).values for sim in cosine_blocks(torch.as_tensor(rows))]).numpy()


def ranking_row(trainer, data, head: np.ndarray) -> dict:
    users, items, ranks, top = trainer.user_ranks(data, top_k=TOP_K)
    hit, ndcg = per_user_metric(ranks, f"hit@{TOP_K}"), per_user_metric(ranks, f"ndcg@{TOP_K}")
    popular = head[items]
    return {"HR": hit.mean(), "NDCG": ndcg.mean(), "NDCG popular": ndcg[popular].mean(),
            "NDCG long-tail": ndcg[~popular].mean(), "top-10 popular": head[top].mean(),
            "distinct": float(len(np.unique(top)))}


def describe(model_file: str, bias_scales: list[float], norm_powers: list[float], centerings: list[float],
             splits: list[str]) -> None:
    config, model, dataset, _train, valid_data, test_data = load_data_and_model(model_file)
    model.eval()
    counts = np.asarray(training_item_counts(*interaction_columns(dataset), n_items=dataset.item_num), float)
    head = popular_items(counts)
    print(f"\n## {config['backbone']} / {config['method']} (seed {config['seed']}): {model_file}\n")

    sampled = make_trainer(config, model, dataset)  # the checkpoint's fixed negatives
    full = make_trainer(config, model, dataset)
    full.set_negatives(None)
    with capture_user_vectors(model) as captured:
        _users, targets, ranks, top = full.user_ranks(test_data, top_k=TOP_K)
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
        _neighbours[config["dataset"]] = feature_neighbours(features)
    if config["dataset"] in _neighbours:
        near = _neighbours[config["dataset"]][targets]
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
                shift = centering * mean_user if centering else None
                with modified_scores(model, dataset.item_num, scale, power, shift):
                    row = ranking_row(trainer, data, head)
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
    for model_file in args.checkpoints:
        describe(model_file, [1.0] + scales, powers, centerings, args.splits.split(","))


if __name__ == "__main__":
    main()
