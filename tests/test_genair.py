"""GenAIR models: feature alignment, the embedding layer, the cache, calibration, ablations."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from recbole_genair.data.cooccurrence import normalized_scores
from recbole_genair.data.features import FeatureFileError, read_feature_file
from recbole_genair.quick_start import build_config, load_data_and_model, make_trainer, prepare, run


def _prepare(fast_config, backbone="SASRec", **overrides):
    config = build_config(backbone, "ml-100k", "genair", config_dict=dict(fast_config, **overrides))
    return prepare(config)


def test_features_land_on_the_right_item_ids(fast_config, data_root):
    dataset, _, model, _ = _prepare(fast_config)
    tokens, cols = read_feature_file(data_root / "ml-100k" / "ml-100k.archetype", ["prefill_emb", "decoding_emb"])
    by_token = {t: np.concatenate([cols["prefill_emb"][i], cols["decoding_emb"][i]]) for i, t in enumerate(tokens)}
    id2token = dataset.field2id_token["item_id"]
    feats = model.item_embedding.features.numpy()
    assert np.all(feats[0] == 0)  # padding
    for item_id in range(1, dataset.item_num):
        np.testing.assert_array_equal(feats[item_id], by_token[id2token[item_id]])
    # the test copy keeps each user's last 20 items, so the file has rows for unused items
    assert len(tokens) > dataset.item_num - 1


def test_missing_feature_rows_are_an_error_not_zeros(fast_config, tmp_path, data_root):
    lines = (data_root / "ml-100k" / "ml-100k.archetype").read_text().splitlines()
    short = tmp_path / "short.archetype"
    short.write_text("\n".join(lines[:-30]) + "\n")
    with pytest.raises(FeatureFileError, match="no feature row"):
        _prepare(fast_config, archetype_feature_file=str(short))


@pytest.mark.parametrize("features,width", [(["prefill", "decoding"], None), (["prefill"], "prefill_emb"),
                                            (["decoding"], "decoding_emb")])
def test_ablation_switches_select_feature_halves(fast_config, data_root, features, width):
    dataset, _, model, _ = _prepare(fast_config, genair_features=features)
    tokens, cols = read_feature_file(data_root / "ml-100k" / "ml-100k.archetype", ["prefill_emb", "decoding_emb"])
    expected = cols[width].shape[1] if width else cols["prefill_emb"].shape[1] + cols["decoding_emb"].shape[1]
    assert model.item_embedding.projector[0].in_features == expected
    # the values are that half's (the widths alone would not tell halves of equal size apart)
    row = {t: i for i, t in enumerate(tokens)}
    picked = [cols[width]] if width else [cols["prefill_emb"], cols["decoding_emb"]]
    id2token = dataset.field2id_token["item_id"]
    for item_id in (1, dataset.item_num - 1):
        np.testing.assert_array_equal(model.item_embedding.features[item_id].numpy(),
                                      np.concatenate([c[row[id2token[item_id]]] for c in picked]))


def test_table_replaces_id_embedding_and_keeps_padding_and_mask_token(fast_config):
    _, _, model, _ = _prepare(fast_config, backbone="BERT4Rec")
    table = model.item_embedding.weight
    assert table.shape == (model.n_items + 1, 32)  # items + BERT4Rec's mask token
    assert torch.all(table[0] == 0)
    assert model.item_embedding.extra.requires_grad
    assert not any(p is model.item_embedding.features for p in model.parameters())  # frozen


def test_eval_cache_matches_uncached_scores_and_is_rebuilt_after_a_step(fast_config):
    _, (train, valid, _), model, trainer = _prepare(fast_config)
    batch = next(iter(valid))[0]
    model.eval()
    with torch.no_grad():
        first = model.full_sort_predict(batch)
        cached = model.item_embedding.weight
        assert model.item_embedding.weight is cached  # no recomputation while nothing changed
        torch.testing.assert_close(cached, model.item_embedding.project())
        torch.testing.assert_close(model.full_sort_predict(batch), first)
    # an optimizer step changes the projector even if the model stays in eval mode
    loss = model.calculate_loss(next(iter(train)))
    trainer.optimizer.zero_grad()
    loss.backward()
    trainer.optimizer.step()
    with torch.no_grad():
        after = model.full_sort_predict(batch)
        assert model.item_embedding.weight is not cached
        torch.testing.assert_close(model.item_embedding.weight, model.item_embedding.project())
    assert not torch.allclose(after, first)
    # a fused optimizer updates parameters in place without bumping their version counter,
    # also on a loss of the user's own that never enters the model's training step
    fused = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    for own_loss in (False, True):
        with torch.no_grad():
            cached = model.item_embedding.weight
        loss = model.item_embedding.project().sum() if own_loss else model.calculate_loss(next(iter(train)))
        fused.zero_grad()
        loss.backward()
        fused.step()
        with torch.no_grad():
            assert not torch.allclose(model.item_embedding.weight, cached)
            torch.testing.assert_close(model.item_embedding.weight, model.item_embedding.project())


@pytest.mark.parametrize("backbone", ["SASRec", "BERT4Rec"])
def test_loss_is_rank_loss_plus_alpha_times_calibration(fast_config, backbone):
    dataset, (train, _, _), model, _ = _prepare(fast_config, backbone=backbone, calibration_alpha=0.1,
                                                calibration_gamma=0.7, calibration_t=1.3)
    interaction = next(iter(train))
    model.train()
    torch.manual_seed(0)
    total = model.calculate_loss(interaction)
    model.calibration_alpha, calibration = 0.0, model.calibration
    model.calibration = None
    torch.manual_seed(0)
    rank = model.calculate_loss(interaction)
    # the paper's formula, evaluated directly on the batch's distinct target items
    # (BERT4Rec predicts the items at its masked positions; 0 pads that list)
    targets = interaction["Pos_item_id"] if backbone == "BERT4Rec" else interaction["item_id"]
    items = torch.unique(targets[targets > 0])
    with torch.no_grad():
        e = torch.nn.functional.normalize(model.item_embedding.project()[items], dim=-1)
    s = normalized_scores(dataset.item_cooccurrence)
    ids = items.tolist()
    total_pairs, acc = 0, 0.0
    for a in range(len(ids)):
        for b in range(len(ids)):
            if a != b:
                w = math.exp(-0.7 * s[ids[a], ids[b]])      # gamma and t differ: a swap shows
                acc += w * math.exp(-1.3 * float(((e[a] - e[b]) ** 2).sum()))
                total_pairs += 1
    assert calibration is not None
    torch.testing.assert_close(total - rank, torch.tensor(0.1 * acc / total_pairs), atol=1e-5, rtol=1e-4)


def test_without_calibration_builds_no_loss(fast_config):
    from recbole.model.sequential_recommender import SASRec
    _, (train, _, _), model, _ = _prepare(fast_config, calibration_alpha=0)
    assert model.calibration is None
    batch = next(iter(train))                 # the loss is RecBole SASRec's own, on the projected table
    model.train()
    torch.manual_seed(0)
    ours = model.calculate_loss(batch)
    torch.manual_seed(0)
    torch.testing.assert_close(ours, SASRec.calculate_loss(model, batch))


@pytest.mark.parametrize("backbone", ["SASRec", "GRU4Rec", "BERT4Rec"])
def test_short_genair_run_learns_and_checkpoint_reloads(backbone, fast_config):
    result = run(backbone, "ml-100k", "genair", config_dict=dict(fast_config, epochs=2))
    assert result["best_valid_result"]["ndcg@10"] > 0.12, result  # random ranker: ~0.045
    config, model, dataset, _, _, test_data = load_data_and_model(result["saved_model_file"])
    trainer = make_trainer(config, model, dataset)
    again = trainer.evaluate(test_data, load_best_model=False)
    assert dict(again) == pytest.approx(result["test_result"], abs=1e-4)
    if backbone == "SASRec":  # in a fresh process, where no Config was ever built (numpy aliases)
        code = ("import sys, json; from recbole_genair.quick_start import load_data_and_model, make_trainer; "
                "c, m, d, _, _, t = load_data_and_model(sys.argv[1]); "
                "print(json.dumps(dict(make_trainer(c, m, d).evaluate(t, load_best_model=False))))")
        fresh = subprocess.run([sys.executable, "-c", code, result["saved_model_file"]], capture_output=True,
                               text=True, timeout=600)
        assert fresh.returncode == 0, fresh.stderr[-2000:]
        assert json.loads(fresh.stdout.strip().splitlines()[-1]) == pytest.approx(result["test_result"], abs=1e-4)


def test_checkpoint_refuses_other_features(fast_config, tmp_path, data_root):
    _, _, model, _ = _prepare(fast_config)
    state = model.state_dict()
    lines = (data_root / "ml-100k" / "ml-100k.archetype").read_text().splitlines()
    header, body = lines[0], lines[1:]
    changed = []
    for row in body:  # same shape, other values: every prefill value zeroed
        token, prefill, decoding = row.split("\t")
        changed.append("\t".join([token, " ".join("0" for _ in prefill.split()), decoding]))
    other = tmp_path / "other.archetype"
    other.write_text("\n".join([header] + changed) + "\n")
    _, _, model2, _ = _prepare(fast_config, archetype_feature_file=str(other))
    with pytest.raises(RuntimeError, match="other archetype features"):
        model2.load_state_dict(state)


@pytest.mark.parametrize("backbone", ["SASRec", "GRU4Rec", "BERT4Rec"])
def test_bpr_step_projects_only_looked_up_rows_with_the_same_loss_and_gradients(backbone, fast_config):
    _, (train, _, _), model, _ = _prepare(fast_config, backbone, loss_type="BPR", calibration_alpha=0.1)
    table = model.item_embedding
    interaction = next(iter(train))
    model.train()
    assert model.sparse_step()
    projected = []
    original = table.project
    table.compute_table = lambda: projected.append(1) or original()
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(sparse):
        torch.manual_seed(0)  # same dropout masks on both paths
        model.sparse_step = lambda: sparse
        loss = model.calculate_loss(interaction)
        return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

    sparse_loss, sparse_grads = loss_and_grads(True)
    assert projected == []  # BPR and the calibration only looked rows up
    dense_loss, dense_grads = loss_and_grads(False)
    assert projected == [1]
    torch.testing.assert_close(sparse_loss, dense_loss, rtol=1e-5, atol=1e-6)
    for s, d in zip(sparse_grads, dense_grads):
        assert (s is None) == (d is None)
        if s is not None:
            torch.testing.assert_close(s, d, rtol=1e-4, atol=1e-6)
    # rows of the padding id stay zero and BERT4Rec's mask token row is its trainable vector
    with table.step(sparse=True):
        ids = torch.tensor([[0, 1, table.num_embeddings - 1]])
        rows = table(ids)
    full = original()
    torch.testing.assert_close(rows[0], full[ids[0]])
    assert torch.all(rows[0, 0] == 0)


def test_projector_dtype_bfloat16_runs_the_projector_in_bf16_and_returns_a_float32_table(fast_config):
    _, _, fp32, _ = _prepare(fast_config, "SASRec")
    _, _, bf16, _ = _prepare(fast_config, "SASRec", projector_dtype="bfloat16")
    bf16.load_state_dict(fp32.state_dict())  # same weights: only the projector's precision differs
    seen = []  # (module type, input dtype, output dtype) of every projector module
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((type(m), i[0].dtype, o.dtype)))
             for m in bf16.item_embedding.projector]
    a, b = fp32.item_embedding.project(), bf16.item_embedding.project()
    for h in hooks:
        h.remove()
    # the Linear maps compute in bf16; LayerNorm and GELU get and give float32 (in bf16 the
    # LayerNorm's parameter gradients, sums over every item row, came out 10-18 % off)
    assert [o for t, _, o in seen if t is torch.nn.Linear] == [torch.bfloat16] * 2
    assert {(i, o) for t, i, o in seen if t is not torch.nn.Linear} == {(torch.float32, torch.float32)}
    assert b.dtype == torch.float32
    assert not torch.equal(a, b), "the bf16 path computed exactly the float32 table"
    cos = torch.nn.functional.cosine_similarity(a[1:], b[1:], dim=-1)
    assert cos.min() > 0.999
    assert torch.all(b[0] == 0)
    b.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in bf16.item_embedding.projector.parameters())
    with pytest.raises(ValueError, match="projector_dtype must be one of float32, bfloat16"):
        _prepare(fast_config, "SASRec", projector_dtype="float16")


@pytest.mark.parametrize("backbone", ["SASRec", "BERT4Rec"])
def test_item_table_norm_l2_gives_unit_item_rows_on_both_paths(backbone, fast_config):
    _, (train, _, _), model, _ = _prepare(fast_config, backbone, item_table_norm="l2")
    table = model.item_embedding
    full = table.project()
    norms = full[1:table.num_items].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert torch.all(full[0] == 0)  # padding stays zero
    if table.extra is not None:  # BERT4Rec's mask token is a free trainable row
        torch.testing.assert_close(full[table.num_items:], table.extra)
    ids = torch.tensor([[0, 3, 1, 3]])
    with table.step(sparse=True):
        torch.testing.assert_close(table(ids), full[ids])
    _, _, default, _ = _prepare(fast_config, backbone)
    assert default.item_embedding.project()[1:].norm(dim=-1).std() > 1e-3  # off by default
    with pytest.raises(ValueError, match="item_table_norm must be one of none, l2"):
        _prepare(fast_config, backbone, item_table_norm="layer")


def test_feature_scaling_standardize_whitens_the_item_features(fast_config):
    dataset, _, plain, _ = _prepare(fast_config)
    _, _, model, _ = _prepare(fast_config, feature_scaling="standardize")
    raw, scaled = plain.item_embedding.features, model.item_embedding.features
    assert raw[1:].std(dim=0).max() / raw[1:].std(dim=0).min() > 5  # the paper's features: unequal scales
    torch.testing.assert_close(scaled[1:].mean(dim=0), torch.zeros(scaled.shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(scaled[1:].std(dim=0), torch.ones(scaled.shape[1]))
    assert torch.all(scaled[0] == 0)  # padding stays zero
    # per column an affine map of the item's own features: alignment by item id is kept
    item = dataset.item_num // 2
    expected = (raw[item] - raw[1:].mean(dim=0)) / raw[1:].std(dim=0)
    torch.testing.assert_close(scaled[item], expected)
    with pytest.raises(ValueError, match="feature_scaling must be one of none, standardize"):
        _prepare(fast_config, feature_scaling="minmax")


@pytest.mark.parametrize("backbone", ["SASRec", "BERT4Rec"])
def test_item_id_residual_starts_at_the_projected_table_and_trains_each_item_row(backbone, fast_config):
    torch.manual_seed(0)
    _, (train, _, _), plain, _ = _prepare(fast_config, backbone)
    torch.manual_seed(0)
    _, _, model, _ = _prepare(fast_config, backbone, item_id_residual=True)
    table = model.item_embedding
    assert plain.item_embedding.residual is None  # off by default (the paper)
    assert table.residual.shape == (table.num_items, table.embedding_dim)
    torch.testing.assert_close(table.project(), plain.item_embedding.project())  # zero at the start
    with torch.no_grad():
        table.residual.normal_()
    full = table.project()
    assert torch.all(full[0] == 0)  # padding stays zero
    torch.testing.assert_close(full[1:table.num_items],
                               table._project(table.features)[1:] + table.residual[1:])
    ids = torch.tensor([[0, 3, 1, 3]])
    with table.step(sparse=True):
        torch.testing.assert_close(table(ids), full[ids])
    model.calculate_loss(next(iter(train))).backward()
    grad = table.residual.grad
    assert grad[1:].abs().sum(dim=-1).gt(0).float().mean() > 0.5  # full CE: most item rows get a gradient
    assert torch.all(grad[0] == 0)  # the padding row is masked
    _, _, unit, _ = _prepare(fast_config, backbone, item_id_residual=True, item_table_norm="l2")
    with torch.no_grad():
        unit.item_embedding.residual.normal_()
    norms = unit.item_embedding.project()[1:unit.item_embedding.num_items].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))  # l2 still gives unit rows


def test_calibration_counts_are_those_of_recboles_training_split(fast_config):
    """The counts the loss uses equal a naive pair count over the sequences RecBole trains on
    (its train split, each user's first item put back): no valid or test item enters."""
    from recbole_genair.data.cooccurrence import naive_cooccurrence_counts
    from recbole_genair.data.dataset import interaction_columns
    dataset, (train, _, _), _, _ = _prepare(fast_config)
    users, items, times = interaction_columns(train._dataset)
    expected = naive_cooccurrence_counts(users, items, times, n_items=dataset.item_num, holdout=0)
    assert (dataset.item_cooccurrence != expected).nnz == 0 and expected.nnz > 0


def test_calibration_counts_of_short_users_follow_recboles_split(fast_config, tmp_path):
    """Users with 2 or 3 interactions (the paper's Fashion and Yelp have many with 3): RecBole
    trains on both items of a 2-item user and on the first two of a 3-item user; the counts
    take exactly the pairs of the sequences RecBole trains on."""
    from itertools import combinations

    from recbole.data import data_preparation

    from recbole_genair.quick_start import create_dataset
    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    seqs = {"a": ["i1", "i2", "i3"], "b": ["i4", "i5"], "c": ["i1", "i6", "i7", "i8", "i9"],
            "d": ["i2", "i6", "i4", "i5"], "e": ["i7"]}
    (data / "tiny.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{t}\n" for u, items in seqs.items() for t, i in enumerate(items)))
    (data / "tiny.archetype").write_text("item_id:token\tprefill_emb:float_seq\tdecoding_emb:float_seq\n" + "".join(
        f"i{k}\t{k} 0\t0 {k}\n" for k in range(1, 10)))
    config = build_config("SASRec", "tiny", "genair", config_dict=dict(
        fast_config, data_path=str(tmp_path / "data"), eval_negatives=0, user_inter_num_interval=None,
        item_inter_num_interval=None))
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    feat, tok = train._dataset.inter_feat, dataset.field2id_token["item_id"]
    trained: dict = {}
    for user, seq, length, target in zip(feat["user_id"].tolist(), feat["item_id_list"].tolist(),
                                         feat["item_length"].tolist(), feat["item_id"].tolist()):
        trained.setdefault(user, set()).update(seq[:length] + [target])
    assert {frozenset(tok[i] for i in v) for v in trained.values()} == {   # what RecBole trains on
        frozenset({"i1", "i2"}), frozenset({"i4", "i5"}), frozenset({"i1", "i6", "i7"}), frozenset({"i2", "i6"})}
    expected = np.zeros((dataset.item_num, dataset.item_num), dtype=np.int64)
    for items in trained.values():
        for i, j in combinations(sorted(items), 2):
            expected[i, j] += 1
            expected[j, i] += 1
    np.testing.assert_array_equal(dataset.item_cooccurrence.toarray(), expected)


def test_calibration_counts_follow_the_leave_one_out_split_and_refuse_others(fast_config):
    from recbole_genair.data.dataset import held_out_per_user
    split = lambda s: build_config("SASRec", "ml-100k", "genair", config_dict=dict(
        fast_config, eval_args={"split": s, "order": "TO", "mode": "full"}))
    assert held_out_per_user(build_config("SASRec", "ml-100k", "genair", config_dict=fast_config)) == 2
    assert held_out_per_user(split({"LS": "valid_only"})) == 1
    with pytest.raises(ValueError, match="supports only RecBole's leave-one-out split"):
        held_out_per_user(split({"RS": [0.8, 0.1, 0.1]}))
    with pytest.raises(ValueError, match="supports only"):   # refused when the data set is built
        prepare(split({"RS": [0.8, 0.1, 0.1]}))
