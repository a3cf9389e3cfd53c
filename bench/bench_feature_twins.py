"""Analysis: are the archetype features' near-twins the same product in another shade or size?

Claim (bench/RESULTS.md, "Where LLMInit's full-ranking lead on SASRec lives"): half of
Amazon_Beauty's items have a feature near-twin (cosine > 0.9 between the concatenated
prefill + decoding features), and most of those twins are *different* products of the same
brand or kind, not variants sharing a title: the features tell item types apart better than
items.

For every item the script finds its nearest other item by feature cosine and compares the
two items' metadata (same brand, same category list, title-word Jaccard), for items with a
twin and for the rest, then prints a few random twin pairs.  Rows are matched to metadata by
item token, never by position.

    python bench/bench_feature_twins.py [--dataset=Amazon_Beauty] [--threshold=0.9] [--examples=6]

It also prints each feature block's scale (standard deviation of its first and last PCA
component) and the twin share after ``feature_scaling: standardize`` (every column to unit
variance), the option that tests whether the twins are an artefact of the components' scales.
"""
from __future__ import annotations

import argparse
import re

import numpy as np
import torch
from bench_popularity import nearest_row, nearest_row_cosine

from recbole_genair.archetypes.prompt import read_item_file
from recbole_genair.data.dataset import FEATURE_FIELDS
from recbole_genair.data.features import read_feature_file
from recbole_genair.model.layers import standardize_columns
from recbole_genair.paths import DATASET_DIR


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="Amazon_Beauty")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--examples", type=int, default=6)
    args = parser.parse_args(argv)
    folder = DATASET_DIR / args.dataset
    tokens, columns = read_feature_file(folder / f"{args.dataset}.archetype", list(FEATURE_FIELDS.values()))
    rows = np.concatenate([columns[f] for f in FEATURE_FIELDS.values()], axis=1)
    _names, item_rows = read_item_file(folder / f"{args.dataset}.item")
    meta = {row["item_id"]: row for row in item_rows}
    items = [meta[token] for token in tokens]  # by item token
    best, nearest = nearest_row(rows)
    twin = best > args.threshold
    title, brand, cats = ([item.get(f, "") for item in items] for f in ("title", "brand", "categories"))
    jaccard = np.array([len(words(title[i]) & words(title[j])) / max(1, len(words(title[i]) | words(title[j])))
                        for i, j in enumerate(nearest)])
    same_brand = np.array([brand[i] != "" and brand[i] == brand[j] for i, j in enumerate(nearest)])
    same_cats = np.array([cats[i] == cats[j] for i, j in enumerate(nearest)])
    print(f"{args.dataset}: {len(rows):,} items, {rows.shape[1]} feature dims; "
          f"items with a feature twin (cosine > {args.threshold:g}): {twin.mean():.1%}\n")
    print("| items | count | nearest item: same brand | same categories | title-word Jaccard, median | Jaccard >= 0.5 |")
    print("|---|--:|--:|--:|--:|--:|")
    for name, mask in (("with a twin", twin), ("without", ~twin)):
        print(f"| {name} | {mask.sum():,} | {same_brand[mask].mean():.1%} | {same_cats[mask].mean():.1%} | "
              f"{np.median(jaccard[mask]):.2f} | {np.mean(jaccard[mask] >= 0.5):.1%} |")
    print("\n| feature block | dims | std of first / last component |")
    print("|---|--:|--:|")
    for field in FEATURE_FIELDS.values():
        std = columns[field].std(axis=0)
        print(f"| {field} | {len(std)} | {std[0]:.3f} / {std[-1]:.3f} |")
    scaled = standardize_columns(torch.as_tensor(rows))
    print(f"items with a feature twin after feature_scaling: standardize: "
          f"{np.mean(nearest_row_cosine(scaled) > args.threshold):.1%}")
    print("\nrandom twin pairs (cosine | item | its nearest item):")
    for i in np.random.default_rng(0).choice(np.flatnonzero(twin), min(args.examples, twin.sum()), replace=False):
        print(f"  {best[i]:.3f} | {title[i][:70]} | {title[nearest[i]][:70]}")


if __name__ == "__main__":
    main()
