"""Co-occurrence counts and scores (paper Eq. 10-11): vectorised vs naive, holdout, save/load."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import recbole_genair.data.cooccurrence as cooc
from recbole_genair.data.cooccurrence import (
    held_out, training_item_counts,
    cooccurrence_counts, load_cooccurrence, naive_cooccurrence_counts, normalized_scores, save_cooccurrence,
)


def random_log(seed: int, n_users: int = 40, n_items: int = 30, max_len: int = 14):
    """Shuffled interaction rows with repeated items, tied timestamps and float times/ids."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for user in rng.choice(10_000, size=n_users, replace=False):       # sparse, unordered user ids
        length = int(rng.integers(0, max_len))
        users += [user] * length
        items += rng.integers(1, n_items, size=length).tolist()         # id 0 = padding, unused
        times += rng.integers(0, 5, size=length).tolist()               # many ties
    perm = rng.permutation(len(users))
    return (np.asarray(users)[perm], np.asarray(items)[perm], np.asarray(times, dtype=np.float64)[perm],
            n_items)


def dense(m: sp.spmatrix) -> np.ndarray:
    return np.asarray(m.todense())


@pytest.fixture(params=["pairs", "product"])
def algorithm(request, monkeypatch):
    """Run a test with each counting algorithm (pair enumeration / sparse product XᵀX)."""
    monkeypatch.setattr(cooc, "counting_algorithm", lambda n_pairs, n_items: request.param)
    return request.param


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("holdout", [0, 2, 3])
def test_vectorised_counts_equal_naive_double_loop(seed, holdout, algorithm):
    users, items, times, n_items = random_log(seed)
    fast = cooccurrence_counts(users, items, times, n_items, holdout=holdout)
    naive = naive_cooccurrence_counts(users, items, times, n_items, holdout=holdout)
    assert isinstance(fast, sp.csr_matrix) and fast.shape == (n_items, n_items)
    assert np.issubdtype(fast.dtype, np.integer)
    np.testing.assert_array_equal(dense(fast), dense(naive))
    assert fast.nnz > 0
    assert (fast != fast.T).nnz == 0                                    # symmetric
    assert not fast.diagonal().any()                                    # zero diagonal ...
    rows = np.repeat(np.arange(n_items), np.diff(fast.indptr))
    assert np.all((np.diff(fast.indices) > 0) | (np.diff(rows) != 0))  # sorted within each row, as
    assert fast.has_sorted_indices                                      # ... the flag says (it is set, not checked)
    assert not np.any(rows == fast.indices)                             # ... not even stored
    assert fast.data.min() > 0


def test_product_and_pairs_agree_with_long_sequences(monkeypatch):
    users, items, times, n_items = random_log(6, n_users=30, n_items=400, max_len=300)
    monkeypatch.setattr(cooc, "counting_algorithm", lambda n_pairs, n_items: "pairs")
    pairs = cooccurrence_counts(users, items, times, n_items)
    monkeypatch.setattr(cooc, "counting_algorithm", lambda n_pairs, n_items: "product")
    product = cooccurrence_counts(users, items, times, n_items)
    assert pairs.nnz > 10_000
    assert (pairs != product).nnz == 0
    np.testing.assert_array_equal(pairs.indices, product.indices)       # same canonical layout


@pytest.mark.parametrize("kind", ["int small range", "int large range", "float"])
def test_stable_order_equals_lexsort(kind, monkeypatch):
    rng = np.random.default_rng(7)
    n = 3000
    users = rng.integers(0, 50, size=n) * (10 ** 9 if kind == "int large range" else 3)
    times = rng.integers(0, 40, size=n).astype(np.float64 if kind == "float" else np.int64)
    if kind == "float":
        times = times * 1e9 + 0.5
    expected = np.lexsort((times, users))                               # numpy's lexsort is stable
    np.testing.assert_array_equal(cooc._stable_user_time_order(users, times), expected)
    monkeypatch.setattr(cooc, "PACKED_KEY_BITS", 0)                     # the lexsort fallback
    np.testing.assert_array_equal(cooc._stable_user_time_order(users, times), expected)


def test_counting_algorithm_choice():
    assert cooc.counting_algorithm(1_200_000, 12_102) == "pairs"       # Amazon Beauty
    assert cooc.counting_algorithm(9_853_235, 1_683) == "product"      # ml-100k
    assert cooc.counting_algorithm(cooc.PAIR_ENUMERATION_LIMIT + 1, 10 ** 6) == "product"


def test_sorted_input_fast_path_equals_shuffled(algorithm):
    users, items, times, n_items = random_log(3)
    order = np.lexsort((times, users))                                  # stable (user, time) order
    a = cooccurrence_counts(users, items, times, n_items)
    b = cooccurrence_counts(users[order], items[order], times[order], n_items)
    np.testing.assert_array_equal(dense(a), dense(b))


def test_hand_computed_counts_and_binary_users(algorithm):
    # user 7: 1 2 1 3 | 4 5   (4, 5 held out); user 3: 2 3 | 9 9
    users = np.array([7, 7, 7, 7, 7, 7, 3, 3, 3, 3])
    items = np.array([1, 2, 1, 3, 4, 5, 2, 3, 9, 9])
    times = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    c = dense(cooccurrence_counts(users, items, times, n_items=10))
    expected = np.zeros((10, 10), dtype=int)
    for i, j, v in [(1, 2, 1), (1, 3, 1), (2, 3, 2)]:                  # item 1 twice counts once
        expected[i, j] = expected[j, i] = v
    np.testing.assert_array_equal(c, expected)


def test_valid_and_test_items_are_excluded(algorithm):
    # Items 5 and 6 only ever meet through user 0's last item (the test target), and
    # items 5 and 7 only through user 1's second-last (the valid target).
    users = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    items = np.array([5, 1, 2, 6, 5, 3, 7, 4, 5, 6, 7, 8])
    times = np.array([1, 2, 3, 4, 1, 2, 3, 4, 9, 1, 1, 0])              # user 2 out of file order
    c = cooccurrence_counts(users, items, times, n_items=10, holdout=2)
    # user 2 in time order: 8 6 7 5 -> training 8 6; 6 and 7 tie and keep input order.
    assert c[5, 6] == 0 and c[6, 5] == 0
    assert c[5, 7] == 0
    assert c[5, 1] == 1 and c[3, 5] == 1 and c[6, 8] == 1
    assert c[6, 7] == 0                                                 # 7 is user 2's valid item
    with_leak = cooccurrence_counts(users, items, times, n_items=10, holdout=0)
    assert with_leak[5, 6] == 2 and with_leak[5, 7] == 2


def test_timestamp_ties_keep_input_order(algorithm):
    # All times equal: the last two rows *in input order* are held out.
    users = np.array([1, 1, 1, 1])
    items = np.array([4, 3, 2, 1])
    c = cooccurrence_counts(users, items, np.zeros(4), n_items=5, holdout=2)
    assert c[4, 3] == 1 and c.nnz == 2


def test_short_users_keep_what_recboles_split_trains_on(algorithm):
    """RecBole's leave-one-out holds out min(2, n-2) of a user's n interactions: a 2-item user
    trains on both, a 3-item one on its first two (test item only), a 4-item one on its first two."""
    seqs = {1: [1, 2], 2: [3, 4, 5], 3: [6, 7, 8, 9], 4: [1, 3, 6, 7, 2], 5: [9]}
    users = np.array([u for u, s in seqs.items() for _ in s])
    items = np.array([i for s in seqs.values() for i in s])
    times = np.array([t for s in seqs.values() for t in range(len(s))])
    c = cooccurrence_counts(users, items, times, n_items=10)
    pairs = {(i, j): int(c[i, j]) for i, j in zip(*c.nonzero()) if i < j}
    assert pairs == {(1, 2): 1, (3, 4): 1, (6, 7): 1, (1, 3): 1, (1, 6): 1, (3, 6): 1}
    assert (c != naive_cooccurrence_counts(users, items, times, n_items=10)).nnz == 0
    valid_only = cooccurrence_counts(users, items, times, n_items=10, holdout=1)
    assert valid_only[3, 4] == 1 and valid_only[4, 5] == 0 and valid_only[7, 8] == 1 and valid_only[8, 9] == 0
    assert [held_out(n, 2) for n in range(6)] == [0, 1, 0, 1, 2, 2]
    assert training_item_counts(users, items, times, n_items=10).tolist() == [0, 2, 1, 2, 1, 0, 2, 1, 0, 0]


def test_empty_input(algorithm):
    empty = cooccurrence_counts(np.array([], dtype=int), np.array([], dtype=int), np.array([]), n_items=3)
    assert empty.shape == (3, 3) and empty.nnz == 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="in length"):
        cooccurrence_counts(np.array([1, 1]), np.array([1]), np.array([0, 1]), n_items=3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cooccurrence_counts(np.array([1, 1]), np.array([1, 3]), np.array([0, 1]), n_items=3)


def test_normalized_scores():
    users, items, times, n_items = random_log(4)
    c = cooccurrence_counts(users, items, times, n_items, holdout=0)
    s = normalized_scores(c)
    assert s.dtype == np.float32 and s.shape == c.shape
    assert s.max() == pytest.approx(1.0)
    np.testing.assert_allclose(dense(s), np.log1p(dense(c)) / np.log1p(c.max()), rtol=1e-6)
    assert (s != s.T).nnz == 0 and not s.diagonal().any()
    # unsorted CSR with a stored diagonal and an explicit zero: diagonal and zero dropped
    messy = sp.csr_matrix((np.array([3, 7, 0, 7]), np.array([2, 0, 1, 0]), np.array([0, 3, 4, 4])),
                          shape=(3, 3))
    assert not messy.has_sorted_indices
    cleaned = normalized_scores(messy)
    np.testing.assert_allclose(cleaned.toarray(), [[0, 0, np.log1p(3) / np.log1p(7)], [1, 0, 0], [0, 0, 0]],
                               rtol=1e-6)
    assert cleaned.nnz == 2
    zero = normalized_scores(sp.csr_matrix((5, 5), dtype=np.int32))
    assert zero.nnz == 0 and zero.shape == (5, 5) and zero.dtype == np.float32


def test_save_load_realigns_by_token(tmp_path):
    users, items, times, n_items = random_log(5)
    c = cooccurrence_counts(users, items, times, n_items)
    tokens = np.array([f"tok{k}" for k in range(n_items)])
    path = save_cooccurrence(tmp_path / "x.cooc.npz", c, tokens)
    assert path.is_file() and path.name == "x.cooc.npz"
    # Another data set: shuffled id map, two tokens dropped, one new token.
    rng = np.random.default_rng(0)
    kept = [t for t in tokens if t not in ("tok3", "tok7")] + ["brand_new"]
    new_ids = rng.permutation(len(kept))
    token_to_id = {t: int(i) for t, i in zip(kept, new_ids)}
    loaded = load_cooccurrence(path, token_to_id)
    assert loaded.shape == (len(kept), len(kept))
    old = dense(c)
    old_id = {t: k for k, t in enumerate(tokens)}
    expected = np.zeros(loaded.shape, dtype=np.int64)
    for a in kept:
        for b in kept:
            if a in old_id and b in old_id:
                expected[token_to_id[a], token_to_id[b]] = old[old_id[a], old_id[b]]
    np.testing.assert_array_equal(dense(loaded), expected)
    assert expected.sum() > 0
    # Identity map round trip.
    same = load_cooccurrence(path, {t: k for k, t in enumerate(tokens)})
    np.testing.assert_array_equal(dense(same), old)


def test_save_rejects_token_mismatch(tmp_path):
    with pytest.raises(ValueError, match="item tokens"):
        save_cooccurrence(tmp_path / "y.npz", sp.csr_matrix((3, 3), dtype=np.int32), ["a", "b"])


def test_holdout_follows_recbole_float32_time_order():
    """RecBole keeps times as float32 once built and splits by them, ties in file order: two
    Unix times 1 s apart are one float32, so the file's order decides which is held out."""
    from types import SimpleNamespace

    import pandas as pd

    from recbole_genair.data.dataset import interaction_columns
    a, b, c, e = 1, 2, 3, 4
    frame = pd.DataFrame({"user_id": [1, 1, 1, 1], "item_id": [a, c, b, e],
                          "timestamp": [1e9 - 1000, 1e9 + 1, 1e9, 1e9 + 1000]})
    dataset = SimpleNamespace(inter_feat=frame, uid_field="user_id", iid_field="item_id", time_field="timestamp",
                              item_id_list_field="item_id_list")
    counts = cooccurrence_counts(*interaction_columns(dataset), n_items=5, holdout=2)
    # RecBole's order: a, c, b (tie, file order), e -> valid b, test e; training a, c
    assert counts[a, c] == 1 and counts[a, b] == 0
