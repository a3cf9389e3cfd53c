"""Behavioral-calibration loss (paper Eq. 12-14) and its gradient (Proposition 3.1)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recbole_genair.data.cooccurrence import cooccurrence_counts, normalized_scores
import recbole_genair.model.calibration as calibration
from recbole_genair.model.calibration import CalibrationLoss, PairWeights, calibration_loss


def unit(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)


def sym_weights(n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, n, generator=g, dtype=dtype)
    return (w + w.t()) / 2


def double_loop(emb: torch.Tensor, w: torch.Tensor, t: float, variant: str) -> float:
    e = emb.detach().double().numpy()
    n = len(e)
    total = 0.0
    for i, j in itertools.permutations(range(n), 2):
        d2 = float(((e[i] - e[j]) ** 2).sum())
        total += float(w[i, j]) * (math.exp(-t * d2) if variant == "kernel" else -d2)
    return total / (n * (n - 1))


def random_scores(n_items: int, density: float, seed: int) -> sp.csr_matrix:
    """A symmetric random S in (0, 1] with an empty diagonal."""
    upper = sp.random(n_items, n_items, density=density, random_state=seed, format="coo", dtype=np.float32)
    keep = upper.row < upper.col
    upper = sp.coo_matrix((upper.data[keep] * 0.9 + 0.1, (upper.row[keep], upper.col[keep])),
                          shape=upper.shape)
    return (upper + upper.T).tocsr()


# ---------------------------------------------------------------- the loss value


@pytest.mark.parametrize("variant", ["kernel", "released"])
@pytest.mark.parametrize("t", [2.0, 0.7])
@pytest.mark.parametrize("n", [2, 3, 9])
def test_loss_equals_double_loop(variant, t, n):
    emb, w = unit(n, 5, seed=n), sym_weights(n, seed=10 + n)
    w[0, -1] = 0.3                                                     # also asymmetric weights
    loss = calibration_loss(emb, w, t=t, variant=variant)
    assert loss.dim() == 0
    assert float(loss) == pytest.approx(double_loop(emb, w, t, variant), rel=1e-10, abs=1e-12)


def test_float32_matches_double_loop_and_diagonal_is_ignored():
    emb, w = unit(16, 8, seed=1, dtype=torch.float32), sym_weights(16, seed=2, dtype=torch.float32)
    loss = calibration_loss(emb, w)
    w2 = w.clone()
    w2.fill_diagonal_(123.0)
    assert float(calibration_loss(emb, w2)) == float(loss)
    assert float(loss) == pytest.approx(double_loop(emb, w, 2.0, "kernel"), rel=1e-5)


def test_identical_embeddings_are_numerically_safe():
    e = F.normalize(torch.ones(4, 3, dtype=torch.float64), dim=-1).requires_grad_()
    loss = calibration_loss(e, torch.ones(4, 4, dtype=torch.float64))
    assert loss.item() == pytest.approx(1.0)                           # all distances 0, kernel 1
    loss.backward()
    assert torch.isfinite(e.grad).all()


def test_unknown_variant_raises():
    with pytest.raises(ValueError, match="unknown calibration variant 'paper'"):
        calibration_loss(unit(3, 2, 0), torch.ones(3, 3, dtype=torch.float64), variant="paper")
    pw = PairWeights.from_scores(random_scores(5, 0.5, 0))
    with pytest.raises(ValueError, match="unknown calibration variant"):
        CalibrationLoss(pw, variant="Kernel")


# ---------------------------------------------------------------- gradients


def proposition_3_1(emb: torch.Tensor, w: torch.Tensor, t: float) -> torch.Tensor:
    """-(4t/(n(n-1))) Σ_{j≠i} w_ij exp(-t||e_i-e_j||²)(e_i - e_j), written as a loop."""
    e = emb.detach()
    n = len(e)
    grad = torch.zeros_like(e)
    for i in range(n):
        for j in range(n):
            if i != j:
                diff = e[i] - e[j]
                grad[i] += w[i, j] * torch.exp(-t * (diff @ diff)) * diff
    return grad * (-4.0 * t / (n * (n - 1)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("t", [2.0, 0.5])
def test_autograd_equals_proposition_3_1(dtype, t):
    n = 12
    emb = unit(n, 6, seed=3, dtype=dtype).requires_grad_()
    w = sym_weights(n, seed=4, dtype=dtype)
    calibration_loss(emb, w, t=t).backward()
    expected = proposition_3_1(emb.double(), w.double(), t)
    torch.testing.assert_close(emb.grad.double(), expected, rtol=1e-5, atol=1e-7)
    assert expected.abs().max() > 1e-3                                 # non-trivial


def test_gradient_through_normalize_is_tangent():
    raw = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
    calibration_loss(F.normalize(raw, dim=-1), sym_weights(7, 6)).backward()
    radial = (raw.grad * raw.detach()).sum(dim=1)
    torch.testing.assert_close(radial, torch.zeros(7, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("variant", ["kernel", "released"])
def test_gradcheck_float64(variant):
    emb = unit(6, 4, seed=7).requires_grad_()
    w = torch.rand(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(8))  # asymmetric
    # fixed weights (training): the hand-written backward
    assert torch.autograd.gradcheck(lambda e: calibration_loss(e, w, t=1.3, variant=variant), (emb,))
    # weights with a gradient take the autograd path, checked the same way
    assert torch.autograd.gradcheck(lambda e, ww: calibration_loss(e, ww, t=2.0, variant=variant),
                                    (emb, w.clone().requires_grad_()))
    raw = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda r: calibration_loss(F.normalize(r, dim=-1), w.detach(), variant=variant), (raw,))


def test_loss_module_gradcheck_through_duplicates():
    pw = PairWeights.from_scores(random_scores(20, 0.3, 1), gamma=2.0)
    loss = CalibrationLoss(pw, t=2.0)
    ids = torch.tensor([3, 17, 3, 5, 11, 17])
    emb = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    assert torch.autograd.gradcheck(lambda e: loss(e, ids), (emb,))
    loss(emb, ids).backward()
    assert emb.grad[2].abs().sum() == 0 and emb.grad[5].abs().sum() == 0  # only first occurrences


@pytest.mark.parametrize("variant", ["kernel", "released"])
@pytest.mark.parametrize("log_space", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
def test_blocked_forward_and_backward_match_autograd(monkeypatch, variant, log_space, symmetric):
    """Several row blocks (tiny block size): value and gradient equal the plain autograd formula."""
    monkeypatch.setattr(calibration, "_BLOCK_ELEMENTS", 64)             # 16 rows per block
    n = 41
    raw = torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    w = sym_weights(n, 12) if symmetric else torch.rand(n, n, dtype=torch.float64,
                                                         generator=torch.Generator().manual_seed(12))
    w = w + 0.05
    fused_in = raw.clone().requires_grad_()
    given = torch.log(w) if log_space else w
    fused = calibration._fused_loss(F.normalize(fused_in, dim=-1), given, 2.0, variant,
                                    log_space=log_space, symmetric=symmetric)
    fused.backward()
    plain_in = raw.clone().requires_grad_()
    plain = calibration._autograd_loss(F.normalize(plain_in, dim=-1), w, 2.0, variant == "kernel")
    plain.backward()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-12)
    assert fused.item() == pytest.approx(double_loop(F.normalize(raw, dim=-1), w, 2.0, variant), rel=1e-10)
    torch.testing.assert_close(fused_in.grad, plain_in.grad, rtol=1e-9, atol=1e-12)


def test_module_equals_functional_form_on_weights():
    """CalibrationLoss folds exp(-γS) into the kernel; same value/gradient as calibration_loss(e, w)."""
    pw = PairWeights.from_scores(random_scores(300, 0.05, 9), gamma=2.5)
    ids = torch.randperm(300, generator=torch.Generator().manual_seed(2))[:120]
    raw = torch.randn(120, 16, generator=torch.Generator().manual_seed(3))
    a_in, b_in = raw.clone().requires_grad_(), raw.clone().requires_grad_()
    a = CalibrationLoss(pw)(a_in, ids)
    order = torch.argsort(ids)
    b = calibration_loss(F.normalize(b_in[order], dim=-1), pw(ids[order]))
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    torch.testing.assert_close(a_in.grad, b_in.grad, rtol=1e-4, atol=1e-9)


# ---------------------------------------------------------------- CalibrationLoss


def test_module_collapses_duplicates_and_normalises():
    s = random_scores(30, 0.2, 2)
    pw = PairWeights.from_scores(s, gamma=1.5)
    module = CalibrationLoss(pw, t=2.0)
    g = torch.Generator().manual_seed(1)
    table = torch.randn(30, 8, dtype=torch.float64, generator=g) * 3      # not unit norm
    ids = torch.tensor([4, 9, 4, 4, 21, 9, 2])
    loss = module(table[ids], ids)
    distinct = [2, 4, 9, 21]
    e = F.normalize(table[distinct], dim=-1)
    w = torch.tensor([[math.exp(-1.5 * s[i, j]) for j in distinct] for i in distinct], dtype=torch.float64)
    assert loss.item() == pytest.approx(double_loop(e, w, 2.0, "kernel"), rel=1e-6)  # float32 weights
    # the same as passing each distinct item once, in any order
    perm = torch.tensor([21, 2, 9, 4])
    assert module(table[perm], perm).item() == pytest.approx(loss.item(), rel=1e-12)


@pytest.mark.parametrize("ids", [[7], [7, 7, 7], []])
def test_fewer_than_two_distinct_items_give_zero_with_graph(ids):
    pw = PairWeights.from_scores(random_scores(10, 0.3, 3))
    ids = torch.tensor(ids, dtype=torch.long)
    emb = torch.randn(len(ids), 4, requires_grad=True)
    loss = CalibrationLoss(pw)(emb, ids)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert emb.grad is not None and not emb.grad.any()
    one = torch.randn(1, 3, requires_grad=True)
    out = calibration_loss(one, torch.ones(1, 1))
    out.backward()
    assert out.item() == 0.0 and not one.grad.any()


def test_module_rejects_misaligned_inputs():
    pw = PairWeights.from_scores(random_scores(10, 0.3, 3))
    with pytest.raises(ValueError, match="aligned"):
        CalibrationLoss(pw)(torch.randn(3, 4), torch.tensor([1, 2]))


def test_released_variant_through_module():
    s = random_scores(15, 0.3, 4)
    module = CalibrationLoss(PairWeights.from_scores(s, gamma=1.0), variant="released")
    ids = torch.tensor([1, 5, 8])
    emb = torch.randn(3, 4, dtype=torch.float64)
    e = F.normalize(emb, dim=-1)
    w = torch.tensor([[math.exp(-s[i, j]) for j in [1, 5, 8]] for i in [1, 5, 8]], dtype=torch.float64)
    assert module(emb, ids).item() == pytest.approx(double_loop(e, w, 2.0, "released"), rel=1e-6)


# ---------------------------------------------------------------- PairWeights


@pytest.mark.parametrize("method", ["dense", "search", "scan", "auto"])
def test_pair_weights_lookup_matches_scipy(method):
    s = random_scores(200, 0.05, 5)
    gamma = 1.7
    pw = PairWeights.from_scores(s, gamma=gamma, method=method)
    g = torch.Generator().manual_seed(0)
    items = torch.randperm(200, generator=g)[:60]
    w = pw(items)
    assert w.shape == (60, 60) and w.dtype == torch.float32
    idx = items.numpy()
    expected = np.exp(-gamma * s[idx][:, idx].toarray())
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    known = s[idx][:, idx].toarray() > 0
    assert known.sum() > 20 and (~known).sum() > 20                   # both kinds of pairs present
    assert np.all(w.numpy()[~known] == 1.0)                            # never co-occurring: w = 1
    assert np.all(w.numpy()[known] < 1.0)


def test_dense_and_sparse_paths_agree_on_real_counts():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 300, size=5000)
    items = rng.zipf(1.5, size=5000) % 400
    counts = cooccurrence_counts(users, items, np.arange(5000), n_items=400)
    s = normalized_scores(counts)
    items_t = torch.from_numpy(rng.choice(400, size=150, replace=False))
    out = {m: PairWeights.from_counts(counts, gamma=3.0, method=m)(items_t) for m in ("dense", "search", "scan")}
    assert torch.equal(out["dense"], out["search"]) and torch.equal(out["dense"], out["scan"])
    auto_dense = PairWeights.from_scores(s, gamma=3.0)                 # small catalog: dense kept
    auto_sparse = PairWeights.from_scores(s, gamma=3.0, dense_limit=0)
    assert hasattr(auto_dense, "dense_scores") and not hasattr(auto_sparse, "dense_scores")
    assert {auto_sparse.choose_method(4), auto_sparse.choose_method(400)} == {"search", "scan"}
    assert auto_dense.choose_method(20) == "dense"
    for n in (4, 150):
        assert torch.equal(auto_sparse(items_t[:n]), out["dense"][:n, :n])
        assert torch.equal(auto_dense(items_t[:n]), out["dense"][:n, :n])
    for method in ("dense", "search", "scan"):                          # each path of one module
        assert torch.equal(torch.exp(auto_dense.scores(items_t, method) * -3.0), out["dense"])


def test_pair_weights_gamma_zero_and_gamma_change_without_rebuild():
    s = random_scores(50, 0.2, 6)
    items = torch.arange(50)
    pw = PairWeights.from_scores(s, gamma=0.0, method="search")
    assert torch.equal(pw(items), torch.ones(50, 50))
    pw.gamma = 2.0
    np.testing.assert_allclose(pw(items).numpy(), np.exp(-2.0 * s.toarray()), rtol=1e-6)


def test_pair_weights_empty_scores_give_ones():
    pw = PairWeights.from_counts(sp.csr_matrix((8, 8), dtype=np.int32), gamma=5.0, method="search")
    assert torch.equal(pw(torch.tensor([0, 3, 7])), torch.ones(3, 3))
    pw_scan = PairWeights.from_scores(sp.csr_matrix((8, 8), dtype=np.float32), method="scan")
    assert torch.equal(pw_scan(torch.tensor([1, 2])), torch.ones(2, 2))


def test_pair_weights_buffers_move_and_stay_out_of_state_dict():
    for method in ("dense", "search"):
        pw = PairWeights.from_scores(random_scores(30, 0.2, 7), method=method)
        assert pw.state_dict() == {}
        assert len(list(pw.buffers())) >= 1
        moved = pw.to("cpu")
        assert all(b.device.type == "cpu" for b in moved.buffers())
        meta = PairWeights.from_scores(random_scores(30, 0.2, 7), method=method).to("meta")
        assert all(b.device.type == "meta" for b in meta.buffers())
        holder = CalibrationLoss(pw)
        assert holder.state_dict() == {}


def test_pair_weights_do_not_touch_the_host(monkeypatch):
    """forward is free of .item()/.tolist()/.cpu() (host round trips on an accelerator)."""
    pw = PairWeights.from_scores(random_scores(40, 0.2, 8))              # small: dense and sparse

    def forbidden(*args, **kwargs):
        raise AssertionError("host round trip in PairWeights.forward")

    items = torch.arange(0, 40, 3)
    for name in ("item", "tolist", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for method in ("dense", "search", "scan"):
        pw.method = method
        assert pw(items).shape == (len(items), len(items))


def test_pair_weights_validates_inputs():
    with pytest.raises(ValueError, match="square"):
        PairWeights.from_scores(sp.csr_matrix((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="unknown lookup method"):
        PairWeights.from_scores(random_scores(5, 0.5, 0), method="hash")
    with pytest.raises(ValueError, match="1-D"):
        PairWeights.from_scores(random_scores(5, 0.5, 0))(torch.tensor([[1, 2]]))
