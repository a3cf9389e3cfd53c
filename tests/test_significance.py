"""Per-user paired significance: metric formulas, pairing by user token, agreement with RecBole."""
from __future__ import annotations

import math

import numpy as np
import pytest

from recbole_genair.quick_start import run
from recbole_genair.data.cooccurrence import training_item_counts
from recbole_genair.significance import Evaluated, labels_for, checkpoint_ranks, compare, main, per_user_metric, popular_items


def test_per_user_metrics_from_ranks():
    ranks = np.array([0, 1, 9, 10, 50])
    assert per_user_metric(ranks, "hit@10").tolist() == [1, 1, 1, 0, 0]
    assert np.allclose(per_user_metric(ranks, "ndcg@10"), [1, 1 / math.log2(3), 1 / math.log2(11), 0, 0])
    assert np.allclose(per_user_metric(ranks, "mrr@10"), [1, 0.5, 0.1, 0, 0])
    with pytest.raises(ValueError, match="supported"):
        per_user_metric(ranks, "auc@10")


def test_training_popularity_leaves_out_valid_and_test_items_and_splits_20_80():
    # user 1: items 1,2,3,4 (4 = test, 3 = valid, given out of time order); user 2: 2,2,5,6
    users = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    items = np.array([1, 4, 2, 3, 2, 2, 5, 6])
    times = np.array([1, 9, 2, 3, 1, 2, 3, 4])
    counts = training_item_counts(users, items, times, n_items=7)
    assert counts.tolist() == [0, 1, 3, 0, 0, 0, 0]      # item 2: once by user 1, twice by user 2
    head = popular_items(np.array([0, 5, 1, 9, 1, 0, 3, 3, 2, 0, 7]))  # 10 items -> head of 2
    assert np.flatnonzero(head).tolist() == [3, 10]
    tie = popular_items(np.array([0, 1, 4, 4, 1, 1]))       # 5 items -> 1; tie 2/3 -> smaller id
    assert np.flatnonzero(tie).tolist() == [2]


def test_compare_pairs_by_user_token_and_detects_a_consistent_gain():
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(400)]
    a = {u: int(r) for u, r in zip(users, rng.integers(0, 40, size=len(users)))}
    better = {u: max(0, r - 3) for u, r in a.items()}
    # same pairs in another order: pairing must follow tokens, not positions
    shuffled = dict(sorted(better.items(), key=lambda kv: kv[0][::-1]))
    (hit, ndcg) = compare(a, shuffled, bootstrap=500)
    assert hit.n_users == 400 and hit.diff > 0 and ndcg.diff > 0
    assert ndcg.p_value < 1e-6 and 0 < ndcg.ci_low <= ndcg.diff <= ndcg.ci_high
    expected = per_user_metric(np.array([better[u] for u in users]), "ndcg@10").mean()
    assert ndcg.mean_b == pytest.approx(expected)
    (same, _) = compare(a, dict(a), bootstrap=100)
    assert same.diff == 0 and math.isnan(same.p_value)
    with pytest.raises(ValueError, match="different users"):
        compare(a, {**a, "extra": 1})


def test_checkpoint_ranks_reproduce_recboles_test_metrics(fast_config, tmp_path):
    result = run("SASRec", "ml-100k", "base", config_dict=fast_config)
    evaluated = checkpoint_ranks(result["saved_model_file"])
    ranks, protocol, about = evaluated.ranks, evaluated.protocol, evaluated.about
    assert about["model"] == "SASRec" and about["method"] == "base"
    assert protocol["eval_negatives"] == "100"
    assert len(ranks) == 943 and all(0 <= r <= 100 for r in ranks.values())
    assert set(evaluated.popular) == set(ranks)
    popular_share = sum(evaluated.popular.values()) / len(ranks)
    assert 0.3 < popular_share < 0.95    # ml-100k: a fifth of the films draws most test targets
    values = np.array(list(ranks.values()))
    for metric in ("hit@10", "ndcg@10", "hit@5"):
        assert per_user_metric(values, metric).mean() == pytest.approx(result["test_result"][metric], abs=1e-4)
    full = checkpoint_ranks(result["saved_model_file"], full_ranking=True)
    assert set(full.ranks) == set(ranks) and "eval_negatives" not in full.protocol
    assert full.popular == evaluated.popular
    # a base SASRec's top-10 lists lean to popular items (a fifth of the catalogue)
    assert 0.2 < full.top_popular_share <= 1 and 10 <= full.top_distinct < 1682
    # every sampled candidate is also a full-ranking candidate: ranks can only grow
    assert all(full.ranks[u] >= ranks[u] for u in ranks) and sum(full.ranks.values()) > sum(ranks.values())
    out = tmp_path / "cmp.md"
    assert main([result["saved_model_file"], result["saved_model_file"], "--bootstrap=50", "--by_popularity",
                 f"--out={out}"]) == 0
    text = out.read_text()
    assert text.count("| ndcg@10 |") == 3 and "+0.0000" in text
    n_popular = sum(evaluated.popular.values())
    assert f"| B = SASRec/base | {full.top_popular_share:.1%} |" not in text   # sampled: other lists
    assert f"| B = SASRec/base | {evaluated.top_popular_share:.1%} | {evaluated.top_distinct:,} |" in text
    assert "popular targets (top 20%" in text and f"| {n_popular:,} |" in text
    assert f"| {len(ranks) - n_popular:,} |" in text


def test_labels_name_the_settings_two_checkpoints_differ_in():
    def evaluated(method, **settings):
        about = {"model": "GRU4Rec", "method": method, "settings": {k: repr(v) for k, v in settings.items()}}
        return Evaluated(ranks={}, popular={}, protocol={}, about=about)

    common = {"hidden_size": 64, "loss_type": "CE"}
    a = evaluated("genair", calibration_alpha=0.0, **common)
    b = evaluated("genair", calibration_alpha=0.001, **common)
    assert labels_for(a, b) == ("GRU4Rec/genair (calibration_alpha=0.0)", "GRU4Rec/genair (calibration_alpha=0.001)")
    base = evaluated("base", **common)  # genair's own keys are not differences
    assert labels_for(base, b) == ("GRU4Rec/base", "GRU4Rec/genair")
    many = evaluated("genair", calibration_alpha=0.1, hidden_size=1, loss_type="BPR", a=1, b=2, c=3)
    a = evaluated("genair", calibration_alpha=0.0, a=0, b=0, c=0, **common)
    label = labels_for(a, many)[1]
    assert label.startswith("GRU4Rec/genair (a=1, b=2, c=3, calibration_alpha=0.1") and label.endswith("+2 more)")
    assert labels_for(a, a) == ("GRU4Rec/genair", "GRU4Rec/genair")
    # one method, an option the older checkpoint predates: named, not hidden
    old = evaluated("genair", **common)
    new = evaluated("genair", feature_scaling="standardize", **common)
    assert labels_for(old, new) == ("GRU4Rec/genair (feature_scaling=unset)",
                                    "GRU4Rec/genair (feature_scaling='standardize')")
