"""The language-model baselines: each one's distinctive mechanism, and a short run of each.

Independent of the generated archetype features: a module fixture copies ml-100k into a
temporary data root, keeps each user's last ``KEEP_PER_USER`` interactions (so one epoch
takes seconds) and writes a synthetic ``ml-100k.archetype`` whose "LLM" embeddings mix
the movie's genres, release year and log-popularity with seeded noise under a random
rotation: dense and carrying some item signal, like LLM embeddings, without any LLM.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from recbole.data import data_preparation
from recbole.data.transform import construct_transform
from recbole.model.sequential_recommender import SASRec
from recbole.utils import init_seed

from recbole_genair.data.dataset import ArchetypeDataset
from recbole_genair.model.baselines.alphafuse import NullSpaceItemEmbedding
from recbole_genair.model.baselines.llmemb import soft_contrastive_loss
from recbole_genair.model.baselines.llmesr import nearest_users
from recbole_genair.quick_start import build_config, create_dataset, run
from recbole_genair.registry import backbone_class, model_class

METHODS = {"llminit": "LLMInit", "rlmrec": "RLMRec", "alphafuse": "AlphaFuse", "llmesr": "LLMESR",
           "llmemb": "LLMEmb"}
KEEP_PER_USER = 30
PREFILL_DIMS = 48


def truncate_interactions(path: Path, keep: int) -> None:
    """Keep each user's last ``keep`` interactions (by timestamp, file order on ties)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], [line.split("\t") for line in lines[1:]]
    users = np.array([r[0] for r in rows])
    times = np.array([float(r[3]) for r in rows])
    order = np.lexsort((np.arange(len(rows)), times, users))
    kept, count, last = [], 0, None
    for i in order[::-1]:
        count = count + 1 if users[i] == last else 1
        last = users[i]
        if count <= keep:
            kept.append(i)
    path.write_text("\n".join([header] + ["\t".join(rows[i]) for i in sorted(kept)]) + "\n", encoding="utf-8")


def write_synthetic_features(folder: Path, dims: int = PREFILL_DIMS, seed: int = 0) -> Path:
    """``ml-100k.archetype`` with ``prefill_emb`` (``dims``) and ``decoding_emb`` (24) per item."""
    items = [line.split("\t") for line in (folder / "ml-100k.item").read_text(encoding="utf-8").splitlines()[1:]]
    inter_items = [line.split("\t")[1] for line in (folder / "ml-100k.inter").read_text(encoding="utf-8").splitlines()[1:]]
    tokens, counts = np.unique(inter_items, return_counts=True)
    popularity = dict(zip(tokens, counts))
    genres = sorted({g for row in items for g in row[3].split()})
    signal = np.zeros((len(items), len(genres) + 2))
    for r, row in enumerate(items):
        for genre in row[3].split():
            signal[r, genres.index(genre)] = 1.0
        signal[r, -2] = (float(row[2]) - 1990) / 10 if row[2].strip().isdigit() else 0.0
        signal[r, -1] = np.log1p(popularity.get(row[0], 0))
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(dims, dims)))
    prefill = np.concatenate([signal, rng.normal(size=(len(items), dims - signal.shape[1]))], axis=1) @ rotation
    decoding = rng.normal(size=(len(items), 24))
    path = folder / "ml-100k.archetype"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("item_id:token\tprefill_emb:float_seq\tdecoding_emb:float_seq\n")
        for row, p, d in zip(items, prefill, decoding):
            fh.write(f"{row[0]}\t{' '.join(f'{v:.5f}' for v in p)}\t{' '.join(f'{v:.5f}' for v in d)}\n")
    return path


@pytest.fixture(scope="module")
def baseline_root(data_root, tmp_path_factory) -> Path:
    """A copy of ``data_root``'s ml-100k, truncated, with synthetic features."""
    root = tmp_path_factory.mktemp("baselines")
    folder = root / "ml-100k"
    folder.mkdir()
    for suffix in ("inter", "item"):
        shutil.copy(data_root / "ml-100k" / f"ml-100k.{suffix}", folder)
    truncate_interactions(folder / "ml-100k.inter", KEEP_PER_USER)
    write_synthetic_features(folder)
    return root


@pytest.fixture()
def settings(fast_config, baseline_root) -> dict:
    # one torch thread: with the second core busy, two threads run ~15x slower here
    return dict(fast_config, data_path=str(baseline_root), torch_threads=1)


@pytest.fixture(scope="module")
def data_cache() -> dict:
    return {}


@pytest.fixture()
def make_model(settings, data_cache):
    """``make(method, backbone, **config) -> (model, train_data, raw)``; data loaded once per backbone.

    ``raw`` holds the data set's interactions before RecBole's split (user, item, time).
    """
    def make(method: str, backbone: str = "SASRec", **overrides):
        config = build_config(backbone, "ml-100k", method, config_dict={**settings, **overrides})
        if backbone not in data_cache:
            init_seed(config["seed"], config["reproducibility"])
            dataset = create_dataset(config)
            feat = dataset.inter_feat
            raw = {name: np.asarray(feat[field]).copy() for name, field in
                   (("user", dataset.uid_field), ("item", dataset.iid_field), ("time", dataset.time_field))}
            raw["features"] = dataset.item_features["prefill"]
            train, _, _ = data_preparation(config, dataset)
            data_cache[backbone] = (train, raw)
        train, raw = data_cache[backbone]
        construct_transform(config)  # BERT4Rec's batch field names land in the config
        init_seed(config["seed"], config["reproducibility"])
        return config.model_class(config, train._dataset), train, raw
    return make


def first_batch(train):
    return next(iter(train))


def adam_steps(model, loss_fn, steps: int, lr: float = 1e-2) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# --- registry and configuration ---------------------------------------------------------

def test_every_baseline_is_registered_on_every_backbone():
    for method, prefix in METHODS.items():
        for backbone in ("SASRec", "GRU4Rec", "BERT4Rec"):
            cls = model_class(backbone, method)
            assert cls.__name__ == f"{prefix}{backbone}"
            assert (cls.method, cls.backbone, cls.dataset_class) == (method, backbone, ArchetypeDataset)
            assert issubclass(cls, backbone_class(backbone))
            assert pickle.loads(pickle.dumps(cls)) is cls  # checkpoints find the class by name


def test_method_yaml_reads_the_prefill_embeddings(settings):
    specific = {"llminit": "llminit_std", "rlmrec": "rlmrec_temperature", "alphafuse": "alphafuse_cover",
                "llmesr": "llmesr_neighbors", "llmemb": "llmemb_id_checkpoint"}
    for method, key in specific.items():
        config = build_config("SASRec", "ml-100k", method, config_dict=settings)
        assert config["genair_features"] == ["prefill"], method
        assert config["archetype_feature_file"] is None
        assert key in config.final_config_dict, (method, key)


# --- LLMInit --------------------------------------------------------------------------------

def _pca_gram(features: torch.Tensor, k: int) -> np.ndarray:
    """Gram matrix of the top-``k`` principal coordinates (numpy SVD; sign/rotation free)."""
    x = features[1:].double().numpy()
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    coords = x @ vt[:k].T
    return coords @ coords.T


def test_llminit_table_starts_from_the_projected_llm_embeddings(make_model):
    model, _, raw = make_model("llminit", "SASRec")
    table = model.item_embedding.weight.detach().double()
    width = table.shape[1]  # 32 < 48 feature dims: every column comes from the PCA
    assert torch.all(table[0] == 0)
    assert model.item_embedding.weight.requires_grad  # an ordinary trainable table
    gram = (table[1:] @ table[1:].T).numpy()
    expected = _pca_gram(raw["features"], width)   # unscaled (llminit_std: raw, the reference's)
    assert np.abs(gram - expected).max() < 1e-3 * np.abs(expected).max(), "table is not the PCA projection"
    init, _, _ = make_model("llminit", "SASRec", llminit_std="init")
    init_table = init.item_embedding.weight.detach().double()
    assert abs(init_table[1:].std().item() - 0.02) < 2e-3  # SASRec's initializer_range scale
    assert torch.allclose(init_table[1:] * (table[1:].std() / init_table[1:].std()), table[1:], atol=1e-5)
    for bad in (None, "0.02x", -1.0):
        with pytest.raises(ValueError, match="llminit_std must be raw"):
            make_model("llminit", "SASRec", llminit_std=bad)

    # GRU4Rec wider than the features: 48 PCA columns, the other 16 stay random; BERT4Rec's mask row stays
    model, _, raw = make_model("llminit", "GRU4Rec", embedding_size=64)
    table = model.item_embedding.weight.detach().double()
    pca_block = table[1:, :PREFILL_DIMS]
    gram = (pca_block @ pca_block.T).numpy()
    expected = _pca_gram(raw["features"], PREFILL_DIMS)
    expected *= gram.trace() / expected.trace()
    assert np.abs(gram - expected).max() < 1e-3 * np.abs(expected).max()
    assert table[1:, PREFILL_DIMS:].std() > 0
    bert, _, _ = make_model("llminit", "BERT4Rec")
    assert bert.item_embedding.weight.shape[0] == bert.n_items + 1
    assert bert.item_embedding.weight[bert.mask_token].abs().sum() > 0


# --- RLMRec ---------------------------------------------------------------------------------

def test_rlmrec_loss_is_backbone_plus_weighted_alignment_and_alignment_trains_the_id_table(make_model):
    model, train, _ = make_model("rlmrec", "SASRec")
    batch = first_batch(train)
    items = model.batch_target_items(batch)
    model.eval()  # no dropout: the two computations below see the same network
    with torch.no_grad():
        total = model.calculate_loss(batch)
        expected = SASRec.calculate_loss(model, batch) + model.rlmrec_weight * model.alignment_loss(items)
    assert torch.allclose(total, expected, atol=1e-5)

    model.train()
    id_before = model.item_embedding.weight.detach().clone()

    def alignment_distance() -> float:  # mean cosine distance between e_i and σ↓(s_i)
        with torch.no_grad():
            e = torch.nn.functional.normalize(model.item_embedding(items), dim=-1)
            s = torch.nn.functional.normalize(model.semantic_mlp(model.llm_table[items]), dim=-1)
            return float(1 - (e * s).sum(-1).mean())

    distance_before = alignment_distance()
    losses = adam_steps(model, lambda: model.alignment_loss(items), steps=15)
    assert losses[-1] < 0.7 * losses[0], losses
    assert alignment_distance() < distance_before
    moved = (model.item_embedding.weight.detach() - id_before).abs().sum(dim=1) > 0
    assert moved[items].all() and not moved[0]  # the aligned ID rows moved, padding did not


# --- AlphaFuse ------------------------------------------------------------------------------

def _assert_null_space(emb: NullSpaceItemEmbedding) -> None:
    language, ids = emb.language.double(), emb.id_component().detach().double()
    # every item's ID vector is orthogonal to every item's language vector: the subspaces are
    assert (language @ ids.T).abs().max() < 1e-6, "ID part not orthogonal to the language subspace"
    assert torch.allclose(emb.weight[:emb.num_items].detach().double(), language + ids, atol=1e-6)


def test_alphafuse_id_part_stays_in_the_null_space_of_the_language_embeddings(make_model):
    model, train, raw = make_model("alphafuse", "SASRec")
    emb = model.item_embedding
    assert (emb.semantic_dim, emb.null_dim) == (16, 16)  # default d_n = h/2
    # semantic block = whitened top principal coordinates of the LLM embeddings
    z = emb.language[1:, :emb.semantic_dim].double()
    cov = torch.cov(z.T)
    variance = cov.diagonal().mean()
    assert abs(variance.sqrt() - 0.02) < 2e-3  # whitened, at SASRec's initial scale
    assert torch.allclose(cov / variance, torch.eye(emb.semantic_dim, dtype=torch.float64), atol=1e-4)
    x = raw["features"][1:].double()
    x = x - x.mean(dim=0)
    _, _, vt = torch.linalg.svd(x, full_matrices=False)
    top = x @ vt[:emb.semantic_dim].T  # coordinates in the top principal subspace
    assert (z - top @ torch.linalg.lstsq(top, z).solution).abs().max() < 1e-4
    assert torch.all(emb.language[:, emb.semantic_dim:] == 0) and torch.all(emb.weight[0] == 0)
    _assert_null_space(emb)

    language_before, ids_before = emb.language.clone(), emb.id_component().detach().clone()
    adam_steps(model, lambda: model.calculate_loss(first_batch(train)), steps=2)
    assert torch.equal(emb.language, language_before)  # frozen
    assert not torch.allclose(emb.id_component().detach(), ids_before)  # trained
    _assert_null_space(emb)

    model.eval()
    with torch.no_grad():
        assert emb.weight is emb.weight  # cached at inference

    # BERT4Rec: a trainable mask row after the items; explicit null dim; released-code mode
    bert, _, _ = make_model("alphafuse", "BERT4Rec", alphafuse_null_dim=8)
    emb = bert.item_embedding
    assert (emb.semantic_dim, emb.null_dim, emb.num_embeddings) == (24, 8, bert.n_items + 1)
    _assert_null_space(emb)
    added, _, _ = make_model("alphafuse", "SASRec", alphafuse_cover=False)
    emb = added.item_embedding
    assert emb.language[:, emb.semantic_dim:].abs().sum() > 0  # the language keeps its tail coordinates
    top = emb.language.double().clone()
    top[:, emb.semantic_dim:] = 0  # the top-d_s semantic subspace
    assert (top @ emb.id_component().detach().double().T).abs().max() < 1e-6


# --- LLM-ESR --------------------------------------------------------------------------------

def test_nearest_users_are_the_most_cosine_similar_candidates():
    profiles = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.3], [-1.0, 0.0]])
    candidates = torch.tensor([False, True, True, True, True, False])
    neighbours = nearest_users(profiles, candidates, k=2, chunk=2)
    assert neighbours[1].tolist() == [2, 4]     # never itself, never a non-candidate
    assert neighbours[3].tolist() == [4, 2]
    assert neighbours[5].tolist() == [3, 4]     # least dissimilar when everyone points away
    assert 5 not in neighbours.flatten().tolist() and 0 not in neighbours.flatten().tolist()


def test_llmesr_retrieves_the_most_similar_users_by_llm_profile(make_model):
    model, _, raw = make_model("llmesr", "SASRec", llmesr_neighbors=5)
    users, items, times, features = raw["user"], raw["item"], raw["time"], raw["features"]
    order = np.lexsort((np.arange(len(users)), times, users))  # RecBole's stable time order
    profiles = torch.zeros(model.neighbours.shape[0], features.shape[1], dtype=torch.float64)
    for uid in np.unique(users):
        sequence = items[order][users[order] == uid]
        profiles[uid] = features[sequence[:-2]].double().mean(dim=0)  # training items: minus valid and test
    normed = torch.nn.functional.normalize(profiles[1:], dim=1)
    similarity = normed @ normed.T
    similarity.fill_diagonal_(-2)
    expected = similarity.topk(5, dim=1).indices + 1
    found = model.neighbours[1:]
    agree = np.mean([set(a.tolist()) == set(b.tolist()) for a, b in zip(found, expected)])
    assert agree > 0.99, agree
    # the stored histories are the users' latest training inputs
    uid = 7
    sequence = items[order][users[order] == uid][:-2]
    length = int(model.history_len[uid])
    assert model.history[uid, :length].tolist() == sequence[-1 - length:-1].tolist()

    # BERT4Rec: padding row zero in both views, the mask token a row of its own, guides read at a mask
    bert, _, _ = make_model("llmesr", "BERT4Rec", llmesr_neighbors=3)
    bert.eval()
    with torch.no_grad():
        table, width = bert.item_embedding.weight, bert.item_embedding.embedding_dim
        assert table.shape == (bert.n_items + 1, width) and torch.all(table[0] == 0)
        guide = bert.neighbour_guide(torch.tensor([1, 2]))
        assert guide.shape == (2, width) and torch.isfinite(guide).all()
        # a user's representation is read where BERT4Rec predicts: at a mask appended to the
        # history (RecBole's reconstruct_test_data + gather at the last position)
        seq, seq_len = bert.history[1:5], bert.history_len[1:5]
        assert (seq_len > 0).all() and (seq_len < seq.shape[1]).any()
        at_mask = bert.gather_indexes(bert.forward(bert.reconstruct_test_data(seq.clone(), seq_len)), seq_len - 1)
        assert torch.allclose(bert.sequence_representation(seq, seq_len), at_mask, atol=1e-6)
        unmasked = bert.gather_indexes(bert.forward(seq), seq_len - 1)
        assert not torch.allclose(unmasked, at_mask, atol=1e-3)


def test_llmesr_scores_use_both_views_and_distillation_targets_the_neighbours(make_model):
    model, train, _ = make_model("llmesr", "SASRec", llmesr_neighbors=3)
    batch = first_batch(train)
    emb = model.item_embedding
    model.eval()
    with torch.no_grad():
        user = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
        scores = model.full_sort_predict(batch)
        width = emb.collaborative.embedding_dim
        assert user.shape[1] == 2 * width and emb.weight.shape[1] == 2 * width
        assert torch.allclose(scores, user @ emb.weight.T, atol=1e-5)  # [u^co ; u^se]·[e^co ; e^se]
        # each view matters
        saved = emb.collaborative.weight.clone()
        emb.collaborative.weight.mul_(0.5)
        assert not torch.allclose(model.full_sort_predict(batch), scores, atol=1e-4)
        emb.collaborative.weight.copy_(saved)
        assert torch.allclose(model.full_sort_predict(batch), scores, atol=1e-5)  # cache follows the weights
        last = emb.semantic.projector[-1]
        saved = last.weight.clone()
        last.weight.mul_(0.5)
        assert not torch.allclose(model.full_sort_predict(batch), scores, atol=1e-4)
        last.weight.copy_(saved)

        # guide = mean of the neighbours' own encodings
        users = batch[model.USER_ID][:4]
        guide = model.neighbour_guide(users)
        for row, uid in enumerate(users.tolist()):
            nbrs = model.neighbours[uid]
            encoded = model.sequence_representation(model.history[nbrs], model.history_len[nbrs])
            assert torch.allclose(guide[row], encoded.mean(dim=0), atol=1e-5)

    # without cross-attention the views are encoded apart: u^co sees only e^co, u^se only e^se
    apart, _, _ = make_model("llmesr", "SASRec", llmesr_neighbors=3, llmesr_cross_attention=False)
    apart.eval()
    views = apart.item_embedding
    with torch.no_grad():
        inputs = (batch[apart.ITEM_SEQ], batch[apart.ITEM_SEQ_LEN])
        user = apart.forward(*inputs)
        views.semantic.projector[-1].weight.mul_(0.5)
        changed = apart.forward(*inputs)
        assert torch.allclose(changed[:, :width], user[:, :width], atol=1e-6)
        assert not torch.allclose(changed[:, width:], user[:, width:], atol=1e-4)
        views.collaborative.weight.mul_(0.5)
        assert not torch.allclose(apart.forward(*inputs)[:, :width], changed[:, :width], atol=1e-4)

    model.train()
    loss = model.auxiliary_loss(batch)
    assert loss.requires_grad and loss.item() > 0
    loss.backward()  # the guide carries no gradient; the student does
    assert emb.collaborative.weight.grad is not None and emb.collaborative.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("backbone", ["SASRec", "BERT4Rec"])
def test_llmesr_distils_each_users_latest_training_input_by_default(make_model, backbone):
    """``latest`` (the reference: once per user and epoch) distils only the samples whose input
    is the user's latest training input; ``all_prefixes`` distils every RecBole prefix."""
    latest, train, _ = make_model("llmesr", backbone, llmesr_neighbors=3)
    every, _, _ = make_model("llmesr", backbone, llmesr_neighbors=3, llmesr_distill_on="all_prefixes")
    every.load_state_dict(latest.state_dict())
    feat = train._dataset.inter_feat
    users = torch.as_tensor(feat[latest.USER_ID])
    # the latest training input of a user: the sample with the largest target position, i.e. the
    # last row of the user in RecBole's time-ordered training samples
    last_row = {}
    for row, uid in enumerate(users.tolist()):
        last_row[uid] = row
    picked_latest = [last_row[u] for u in sorted(last_row)[:6]]
    latest_rows = set(last_row.values())
    picked_other = [r for r in range(len(users)) if r not in latest_rows][:10]
    batch = feat[torch.tensor(picked_latest + picked_other)]
    for model in (latest, every):
        model.eval()  # no dropout: the comparison is exact
    assert latest.latest_inputs(batch).tolist() == list(range(6))
    with torch.no_grad():
        student = latest.sequence_representation(batch[latest.ITEM_SEQ], batch[latest.ITEM_SEQ_LEN])
        guide = latest.neighbour_guide(batch[latest.USER_ID])
        expected_latest = 0.1 * ((student[:6] - guide[:6]) ** 2).mean()
        expected_every = 0.1 * ((student - guide) ** 2).mean()
        assert torch.allclose(latest.auxiliary_loss(batch), expected_latest, rtol=1e-5)
        assert torch.allclose(every.auxiliary_loss(batch), expected_every, rtol=1e-5)
        assert not torch.allclose(expected_latest, expected_every, rtol=1e-3)
    # a batch without any latest input: an exact zero that still back-propagates
    latest.train()
    zero = latest.auxiliary_loss(feat[torch.tensor(picked_other)])
    assert zero.item() == 0.0 and zero.requires_grad
    zero.backward()
    with pytest.raises(ValueError, match="llmesr_distill_on must be one of latest, all_prefixes"):
        make_model("llmesr", backbone, llmesr_neighbors=3, llmesr_distill_on="every")


# --- LLMEmb ---------------------------------------------------------------------------------

def test_llmemb_item_table_is_the_adapter_and_the_co_trained_id_model_is_a_stop_gradient_teacher(make_model):
    model, train, raw = make_model("llmemb", "SASRec")
    emb = model.item_embedding
    with torch.no_grad():
        assert torch.allclose(emb.weight[1:model.n_items], emb.projector(raw["features"][1:]), atol=1e-5)
        assert torch.all(emb.weight[0] == 0)
    batch = first_batch(train)
    items = model.batch_target_items(batch)
    id_before, adapter_before = model.id_model.item_embedding.weight.detach().clone(), emb.weight.detach().clone()
    adam_steps(model, lambda: model.alignment_loss(items), steps=3)
    assert torch.equal(model.id_model.item_embedding.weight, id_before)  # stop-gradient on the ID side
    assert not torch.allclose(emb.weight.detach(), adapter_before)
    model.zero_grad()
    model.calculate_loss(batch).backward()  # the ID model learns from its own recommendation loss
    assert model.id_model.item_embedding.weight.grad.abs().sum() > 0
    assert emb.projector[0].weight.grad.abs().sum() > 0


def test_llmemb_alignment_to_a_pretrained_id_table_decreases(make_model, settings, tmp_path):
    probe, _, _ = make_model("llminit", "SASRec")
    torch.manual_seed(0)
    table = torch.randn(probe.n_items, 32)  # a trained ID table's scale, not the 0.02 of a fresh one
    path = tmp_path / "id.pth"
    torch.save({"state_dict": {"item_embedding.weight": table}, "config": None}, path)
    model, train, _ = make_model("llmemb", "BERT4Rec", llmemb_id_checkpoint=str(path))
    assert model.id_model is None and torch.equal(model.collaborative_table(), table)
    assert not any(key.startswith("id_model.") for key in model.state_dict())
    items = model.batch_target_items(first_batch(train))
    losses = adam_steps(model, lambda: model.alignment_loss(items), steps=20)
    assert losses[-1] < 0.85 * losses[0], losses  # soft targets: the minimum is their entropy, not 0
    assert torch.equal(model.collaborative_table(), table)  # frozen
    torch.save({"state_dict": {"item_embedding.weight": torch.randn(probe.n_items, 16)}}, path)
    with pytest.raises(ValueError, match="does not fit"):
        make_model("llmemb", "SASRec", llmemb_id_checkpoint=str(path))
    torch.save({"state_dict": {"item_embedding.weight": torch.randn(probe.n_items + 5, 32)}}, path)
    with pytest.raises(ValueError, match="does not fit"):   # more rows: another item numbering
        make_model("llmemb", "SASRec", llmemb_id_checkpoint=str(path))
    # an ID model of the same data set loaded under other filters numbers its items otherwise
    same = build_config("SASRec", "ml-100k", "llminit", config_dict=settings).final_config_dict
    other = SimpleNamespace(final_config_dict={**same, "item_inter_num_interval": "[5,inf)"})
    torch.save({"state_dict": {"item_embedding.weight": table}, "config": other}, path)
    with pytest.raises(ValueError, match=r"other data settings \(item_inter_num_interval: '\[5,inf\)' there"):
        make_model("llmemb", "SASRec", llmemb_id_checkpoint=str(path))
    torch.save({"state_dict": {"item_embedding.weight": table}, "config": SimpleNamespace(final_config_dict=same)}, path)
    assert torch.equal(make_model("llmemb", "SASRec", llmemb_id_checkpoint=str(path))[0].collaborative_table(), table)


def test_alignment_losses_equal_their_formulas_written_out():
    """RLMRec's InfoNCE (cosine / τ, row i's positive is row i) and LLMEmb's soft contrastive
    loss (the reference's Contrastive_Loss2: logits x·yᵀ/τ, targets softmax((x·xᵀ + y·yᵀ)/2 · τ),
    symmetric), element by element in float64."""
    import math

    from recbole_genair.model.baselines.rlmrec import info_nce
    torch.manual_seed(3)
    x, y, tau = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64), 0.7
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))
    expected = sum(-math.log(math.exp(cos(x[i], y[i]) / tau) / sum(math.exp(cos(x[i], y[j]) / tau) for j in range(3)))
                   for i in range(3)) / 3
    assert float(info_nce(x, y, tau)) == pytest.approx(expected, rel=1e-12)

    dot = lambda a, b: float(a @ b)
    def softmax(v):
        z = sum(math.exp(t) for t in v)
        return [math.exp(t) / z for t in v]
    targets = [softmax([(dot(y[i], y[j]) + dot(x[i], x[j])) / 2 * tau for j in range(3)]) for i in range(3)]
    def side(a, b, t):   # rows of a against b, soft targets t[i][j]
        total = 0.0
        for i in range(3):
            logz = math.log(sum(math.exp(dot(a[i], b[j]) / tau) for j in range(3)))
            total += -sum(t[i][j] * (dot(a[i], b[j]) / tau - logz) for j in range(3))
        return total / 3
    transposed = [[targets[j][i] for j in range(3)] for i in range(3)]
    expected = (side(x, y, targets) + side(y, x, transposed)) / 2
    assert float(soft_contrastive_loss(x, y, tau)) == pytest.approx(expected, rel=1e-12)


def test_soft_contrastive_loss_prefers_matched_pairs():
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    matched = soft_contrastive_loss(x, x + 0.01 * torch.randn(16, 8), 2.0)
    shuffled = soft_contrastive_loss(x, x[torch.randperm(16)], 2.0)
    assert matched < shuffled


# --- one short run each -------------------------------------------------------------------

RANDOM_NDCG10 = 0.045  # a random ranker among 101 candidates


@pytest.mark.parametrize("method,backbone", [(m, "SASRec") for m in METHODS]
                         + [("rlmrec", "GRU4Rec"), ("alphafuse", "BERT4Rec")])
def test_one_epoch_beats_the_random_ranker(method, backbone, settings):
    extra = {"llmesr_neighbors": 3} if method == "llmesr" else {}
    result = run(backbone, "ml-100k", method, config_dict={**settings, **extra})
    assert result["best_valid_result"]["ndcg@10"] > RANDOM_NDCG10 + 0.03, result
