"""Per-user paired significance: metric formulas, pairing by user token, agreement with RecBole."""
from __future__ import annotations

import math

import numpy as np
import pytest

from recbole_genair.quick_start import run
from recbole_genair.significance import checkpoint_ranks, compare, main, per_user_metric


def test_per_user_metrics_from_ranks():
    ranks = np.array([0, 1, 9, 10, 50])
    assert per_user_metric(ranks, "hit@10").tolist() == [1, 1, 1, 0, 0]
    assert np.allclose(per_user_metric(ranks, "ndcg@10"), [1, 1 / math.log2(3), 1 / math.log2(11), 0, 0])
    assert np.allclose(per_user_metric(ranks, "mrr@10"), [1, 0.5, 0.1, 0, 0])
    with pytest.raises(ValueError, match="supported"):
        per_user_metric(ranks, "auc@10")


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
    ranks, protocol, about = checkpoint_ranks(result["saved_model_file"])
    assert about["model"] == "SASRec" and about["method"] == "base"
    assert protocol["eval_negatives"] == "100"
    assert len(ranks) == 943 and all(0 <= r <= 100 for r in ranks.values())
    values = np.array(list(ranks.values()))
    for metric in ("hit@10", "ndcg@10", "hit@5"):
        assert per_user_metric(values, metric).mean() == pytest.approx(result["test_result"][metric], abs=1e-4)
    full, full_protocol, _ = checkpoint_ranks(result["saved_model_file"], full_ranking=True)
    assert set(full) == set(ranks) and "eval_negatives" not in full_protocol
    # every sampled candidate is also a full-ranking candidate: ranks can only grow
    assert all(full[u] >= ranks[u] for u in ranks) and sum(full.values()) > sum(ranks.values())
    out = tmp_path / "cmp.md"
    assert main([result["saved_model_file"], result["saved_model_file"], "--bootstrap=50",
                 f"--out={out}"]) == 0
    assert "| ndcg@10 |" in out.read_text() and "+0.0000" in out.read_text()
