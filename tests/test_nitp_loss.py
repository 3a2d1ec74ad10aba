"""Tests for nitp_loss.py: loop references, gradcheck, stop-grad, the paper's curvature analysis, the
projector head, degenerate inputs and every input error.

The reference below is deliberately independent of the module: plain Python floats and the math
module, one pair at a time, with each loss and its gradient written out from the definitions in the
module docstring (gradients derived by hand, not by autograd). Tolerance 1e-9 throughout for
float64 vs float64: both sides evaluate the same O(1) quantities in a different order, so they differ
by a few ulps (~1e-15); 1e-9 leaves six orders of margin for rounding yet any wrong pairing, mask or
normalisation moves values by >1e-3.
"""

import math

import pytest
import torch

from nitp_loss import (
    LOSS_TYPES,
    NITPHead,
    counted_pairs,
    document_pair_mask,
    nitp_loss,
    nitp_loss_terms,
    nitp_pair_mask,
    pairwise_cosine_penalty,
    pairwise_cosine_penalty_terms,
    pairwise_pair_count,
)

TOL = 1e-9  # float64 vs float64, see module docstring


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # tests that draw from the global RNG are reproducible


# ---------------------------------------------------------------------------- independent reference
def ref_pair(p, z, loss_type):
    """(loss, dloss/dp, dloss/dz) for one pair of lists of floats, from the definitions."""
    d = len(p)
    if loss_type == "cosine":
        rp, rz = math.sqrt(sum(x * x for x in p)), math.sqrt(sum(x * x for x in z))
        s = sum(a * b for a, b in zip(p, z)) / (rp * rz)
        # d(1 - cos)/dp = -(z/|z| - s p/|p|) / |p|, and symmetrically for z
        return (1 - s, [-(b / rz - s * a / rp) / rp for a, b in zip(p, z)],
                [-(a / rp - s * b / rz) / rz for a, b in zip(p, z)])
    if loss_type == "mse":
        grad = [2 * (a - b) / d for a, b in zip(p, z)]
        return sum((a - b) ** 2 for a, b in zip(p, z)) / d, grad, [-g for g in grad]
    if loss_type == "smooth_l1":
        errors = [a - b for a, b in zip(p, z)]
        loss = sum(0.5 * e * e if abs(e) < 1 else abs(e) - 0.5 for e in errors) / d
        grad = [(e if abs(e) < 1 else math.copysign(1.0, e)) / d for e in errors]
        return loss, grad, [-g for g in grad]
    if loss_type == "kl":
        def softmax(x):
            m = max(x)
            e = [math.exp(v - m) for v in x]
            return [v / sum(e) for v in e]
        q, pp = softmax(z), softmax(p)
        log_ratio = [math.log(a) - math.log(b) for a, b in zip(q, pp)]
        loss = sum(a * r for a, r in zip(q, log_ratio))
        # dKL/dp = softmax(p) - q;  dKL/dz_k = q_k (log q_k - log p~_k - KL)
        return loss, [b - a for a, b in zip(q, pp)], [a * (r - loss) for a, r in zip(q, log_ratio)]
    raise AssertionError(loss_type)


def ref_nitp(pred, target, valid, pair_valid, shift, loss_type):
    """(mean loss, grad wrt pred, grad wrt target, count) by loops over b and t, float64 tensors out."""
    B, T, d = pred.shape
    P, Z = pred.tolist(), target.tolist()
    V = valid.tolist() if valid is not None else [[True] * T for _ in range(B)]
    total, count = 0.0, 0
    gp = [[[0.0] * d for _ in range(T)] for _ in range(B)]
    gz = [[[0.0] * d for _ in range(T)] for _ in range(B)]
    for b in range(B):
        for t in range(T - shift):
            if not (V[b][t] and V[b][t + shift] and (pair_valid is None or pair_valid[b, t].item())):
                continue
            loss, dp, dz = ref_pair(P[b][t], Z[b][t + shift], loss_type)
            total, count = total + loss, count + 1
            gp[b][t] = [g + x for g, x in zip(gp[b][t], dp)]
            gz[b][t + shift] = [g + x for g, x in zip(gz[b][t + shift], dz)]
    n = max(count, 1)
    as_tensor = lambda g: torch.tensor(g, dtype=torch.float64) / n  # noqa: E731
    return total / n, as_tensor(gp), as_tensor(gz), count


def ref_penalty(h, valid):
    """(mean cosine over ordered pairs i != j of valid positions, grad wrt h, count) by loops."""
    B, T, d = h.shape
    H = h.tolist()
    V = valid.tolist() if valid is not None else [[True] * T for _ in range(B)]
    total, count = 0.0, 0
    grad = [[[0.0] * d for _ in range(T)] for _ in range(B)]
    for b in range(B):
        for i in range(T):
            for j in range(T):
                if i == j or not (V[b][i] and V[b][j]):
                    continue
                _, dcos_di, dcos_dj = ref_pair(H[b][i], H[b][j], "cosine")  # these are grads of 1 - cos
                cos = 1 - ref_pair(H[b][i], H[b][j], "cosine")[0]
                total, count = total + cos, count + 1
                grad[b][i] = [g - x for g, x in zip(grad[b][i], dcos_di)]
                grad[b][j] = [g - x for g, x in zip(grad[b][j], dcos_dj)]
    n = max(count, 1)
    return total / n, torch.tensor(grad, dtype=torch.float64) / n, count


def random_inputs(seed, B=2, T=6, d=5, shift=1, masks="valid+pair"):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    target = 2.0 * torch.randn(B, T, d, generator=g, dtype=torch.float64)  # other scale, as shallow vs deep
    valid = torch.rand(B, T, generator=g) < 0.75 if masks != "none" else None
    pair_valid = torch.rand(B, T - shift, generator=g) < 0.7 if masks == "valid+pair" else None
    return pred, target, valid, pair_valid


def grad_of(fn, *xs):
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    out = fn(*xs)
    return out, torch.autograd.grad(out, xs, allow_unused=True)


# ---------------------------------------------------------------------------- against the reference
@pytest.mark.parametrize("masks", ["none", "valid", "valid+pair"])
@pytest.mark.parametrize("shift", [0, 1, 2])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_loop_reference(loss_type, shift, masks):
    pred, target, valid, pair_valid = random_inputs(100 * LOSS_TYPES.index(loss_type) + 10 * shift + len(masks),
                                                       shift=shift, masks=masks)
    ref_loss, ref_gp, ref_gz, ref_count = ref_nitp(pred, target, valid, pair_valid, shift, loss_type)
    assert ref_count > 0
    for stop_grad in (True, False):
        loss, (gp, gz) = grad_of(lambda p, z: nitp_loss(p, z, valid, shift, loss_type, stop_grad, pair_valid),
                                 pred, target)
        assert abs(loss.item() - ref_loss) < TOL
        torch.testing.assert_close(gp, ref_gp, rtol=0, atol=TOL)
        if stop_grad:
            assert gz is None  # the target is detached: no gradient reaches it
        else:
            torch.testing.assert_close(gz, ref_gz, rtol=0, atol=TOL)
    loss_sum, count = nitp_loss_terms(pred, target, valid, shift, loss_type, pair_valid=pair_valid)
    assert count.dim() == 0 and loss_sum.dim() == 0 and count.item() == ref_count
    assert abs(loss_sum.item() - ref_loss * ref_count) < TOL * ref_count


def test_shift_pairs_pred_t_with_target_t_plus_shift():
    # target[t + shift] is a positive multiple of pred[t]: cosine is exactly 0 at that shift only
    pred = torch.randn(2, 7, 4, dtype=torch.float64)
    for shift in (0, 1, 2):
        target = torch.randn(2, 7, 4, dtype=torch.float64)
        target[:, shift:] = 3.0 * pred[:, :7 - shift]
        assert nitp_loss(pred, target, shift=shift).item() < 1e-12  # cos of parallel vectors is 1 to rounding
        assert nitp_loss(pred, target, shift=(shift + 1) % 3).item() > 0.1
        assert nitp_loss_terms(pred, target, shift=shift)[1].item() == 2 * (7 - shift)


def test_stop_grad_false_moves_target_stop_grad_true_does_not():
    pred, target, valid, _ = random_inputs(5)
    pred.requires_grad_(True)
    target.requires_grad_(True)
    nitp_loss(pred, target, valid).backward()
    assert target.grad is None and pred.grad.abs().sum() > 0
    nitp_loss(pred, target, valid, stop_grad=False).backward()
    assert target.grad is not None and target.grad.abs().sum() > 0


def test_low_precision_inputs_are_computed_in_float32():
    pred, target, valid, _ = random_inputs(6)
    loss = nitp_loss(pred.bfloat16(), target.bfloat16(), valid)
    assert loss.dtype == torch.float32
    # same bf16-exact inputs in float64: a float32 computation of an O(1) mean is within ~1e-7 of it, whereas
    # computing in bf16 would be off by ~1e-3
    assert abs(loss.item() - nitp_loss(pred.bfloat16().double(), target.bfloat16().double(), valid).item()) < 1e-6


# ---------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradcheck(loss_type):
    pred, target, valid, pair_valid = random_inputs(7, B=2, T=4, d=3)
    pred.requires_grad_(True)
    target.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p, z: nitp_loss(p, z, valid, 1, loss_type, stop_grad=False, pair_valid=pair_valid), (pred, target))


def test_gradcheck_penalty_and_head():
    h, _, valid, _ = random_inputs(8, B=2, T=5, d=3)
    assert torch.autograd.gradcheck(lambda x: pairwise_cosine_penalty(x, valid), (h.requires_grad_(True),))
    torch.manual_seed(0)
    head = NITPHead(3, init_std=0.5).double()
    target = torch.randn(2, 5, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: nitp_loss(head(x), target, valid), (h,))


# ---------------------------------------------------------------------------- the paper's analysis
# (docs/method.md, "Curvature of the cosine loss")
@pytest.mark.parametrize("seed,d", [(0, 8), (1, 11), (2, 16), (3, 16)])
def test_cosine_gradient_and_hessian_match_the_paper(seed, d):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(d, generator=g, dtype=torch.float64) * (0.5 + 3 * torch.rand(1, generator=g, dtype=torch.float64))
    z = torch.randn(d, generator=g, dtype=torch.float64)
    loss_of = lambda x: nitp_loss(x.view(1, 1, d), z.view(1, 1, d), shift=0)  # noqa: E731  one pair (h, z)
    r, u, v = h.norm(), h / h.norm(), z / z.norm()
    s = u @ v
    A = v - s * u
    (grad,) = grad_of(loss_of, h)[1]
    torch.testing.assert_close(grad, -A / r, rtol=0, atol=1e-8)
    H = torch.autograd.functional.hessian(loss_of, h)
    eye = torch.eye(d, dtype=torch.float64)
    expected = (s * (eye - torch.outer(u, u)) + torch.outer(u, A) + torch.outer(A, u)) / r ** 2
    torch.testing.assert_close(H, expected, rtol=0, atol=1e-8)  # float64 autograd vs closed form: ~1e-15 apart
    assert abs(u @ H @ u) < 1e-8  # zero radial curvature: the loss never constrains the norm
    for _ in range(3):
        w = torch.randn(d, generator=g, dtype=torch.float64)
        w = w - (w @ u) * u  # tangential
        assert abs(w @ H @ w - s / r ** 2 * (w @ w)) < 1e-8


# ---------------------------------------------------------------------------- projector head
@pytest.mark.parametrize("kind,expected", [("swiglu", lambda d: 12 * d * d), ("linear", lambda d: d * d),
                                           ("none", lambda d: 0)])
def test_head_param_count_and_shape(kind, expected):
    for d in (4, 16):
        head = NITPHead(d, kind=kind)
        assert sum(p.numel() for p in head.parameters()) == expected(d)
        assert all(p.dim() == 2 for p in head.parameters())  # no biases
        h = torch.randn(2, 3, d)
        out = head(h)
        assert out.shape == (2, 3, d)
        if kind == "none":
            assert out is h
        else:
            assert not torch.allclose(out, h)


def test_head_custom_hidden_and_init():
    assert sum(p.numel() for p in NITPHead(8, hidden=5).parameters()) == 3 * 8 * 5
    torch.manual_seed(0)
    weights = torch.cat([p.flatten() for p in NITPHead(64).parameters()])  # 49,152 draws
    # sample std of N(0, 0.02^2) over ~5e4 draws is within ~0.3% (1/sqrt(2n)); 5% catches a wrong std
    assert abs(weights.std().item() - 0.02) < 0.001 and abs(weights.mean().item()) < 0.001
    weights = torch.cat([p.flatten() for p in NITPHead(64, init_std=0.1).parameters()])
    assert abs(weights.std().item() - 0.1) < 0.005


def test_head_errors():
    with pytest.raises(ValueError, match=r"unknown NITPHead kind 'mlp'.*swiglu.*linear.*none"):
        NITPHead(8, kind="mlp")
    with pytest.raises(ValueError, match="only applies to kind='swiglu'"):
        NITPHead(8, hidden=16, kind="linear")
    with pytest.raises(ValueError, match="d_model >= 1 and hidden >= 1"):
        NITPHead(8, hidden=0)


# ---------------------------------------------------------------------------- degenerate inputs
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_no_counted_pairs_gives_zero_loss_and_zero_grad(loss_type):
    pred, target, _, _ = random_inputs(9)
    cases = [dict(valid=torch.zeros(2, 6, dtype=torch.bool)),
             dict(valid=torch.tensor([[True] + [False] * 5] * 2)),  # single real token: no pair with shift 1
             dict(pair_valid=torch.zeros(2, 5, dtype=torch.bool))]
    for kwargs in cases:
        loss, (grad,) = grad_of(lambda p: nitp_loss(p, target, loss_type=loss_type, **kwargs), pred)
        assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
        assert nitp_loss_terms(pred, target, loss_type=loss_type, **kwargs)[1].item() == 0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_zero_vectors_give_finite_loss_and_grad(loss_type):
    pred, target, _, _ = random_inputs(10)
    pred[0, 1] = 0.0
    target[0, 2] = 0.0  # pairs with pred[0, 1] (shift 1): both zero
    target[1, 3] = 0.0
    for p, z in ((pred, target), (torch.zeros_like(pred), target), (torch.zeros_like(pred), torch.zeros_like(target))):
        loss, grads = grad_of(lambda a, b: nitp_loss(a, b, loss_type=loss_type, stop_grad=False), p, z)
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    if loss_type == "cosine":  # eps convention: a zero vector has cosine 0 with everything
        zero = torch.zeros(1, 2, 3)
        assert nitp_loss(zero, torch.ones(1, 2, 3)).item() == 1.0


# ---------------------------------------------------------------------------- pairing masks and counts
EOT = 50256


def test_document_pair_mask_drops_only_pairs_that_cross_a_document_end():
    x = torch.tensor([[5, 6, EOT, 7, 8, EOT]])
    # shift 1: pair t=2 (h at EOT -> first token of the next document) crosses; (6 -> EOT) stays
    assert document_pair_mask(x, 1, EOT).tolist() == [[True, True, False, True, True]]
    # shift 2: a pair crosses when EOT sits at t or t+1
    assert document_pair_mask(x, 2, EOT).tolist() == [[True, False, False, True]]
    assert document_pair_mask(x, 0, EOT).all()


@pytest.mark.parametrize("shift", [0, 1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_pair_masks_and_counts_agree_with_the_loss_and_a_loop(seed, shift):
    """The count train.py divides by (nitp_pair_mask's sum, known before the forward pass) is exactly the count
    nitp_loss_terms averages over, and both equal a loop over (t, t + shift) on random masks and documents."""
    g = torch.Generator().manual_seed(seed)
    B, T = 3, 9
    tokens = torch.randint(0, 4, (B, T), generator=g)
    tokens[tokens == 3] = EOT  # about a quarter of the positions end a document
    valid = torch.rand(B, T, generator=g) < 0.7
    pair_valid = torch.rand(B, T - shift, generator=g) < 0.6
    pred, target = torch.randn(B, T, 4, generator=g), torch.randn(B, T, 4, generator=g)
    # counted_pairs: both ends valid and the pair allowed, for every loss path
    loop = sum(bool(valid[b, t] and valid[b, t + shift] and pair_valid[b, t])
               for b in range(B) for t in range(T - shift))
    assert counted_pairs(valid, shift, pair_valid).sum().item() == loop
    assert nitp_loss_terms(pred, target, valid, shift, pair_valid=pair_valid)[1].item() == loop
    # nitp_pair_mask: every position a real token; a pair crosses a document end when EOT is in tokens[t : t + shift]
    for separator in (None, EOT):
        mask = nitp_pair_mask(tokens, shift, separator)
        loop = sum(separator is None or EOT not in tokens[b, t:t + shift].tolist()
                   for b in range(B) for t in range(T - shift))
        assert mask.shape == (B, T - shift) and mask.sum().item() == loop
        assert nitp_loss_terms(pred, target, shift=shift, pair_valid=mask)[1].item() == loop
    # the penalty's count: ordered pairs i != j of valid positions per sequence
    n = valid.sum(1).tolist()
    assert pairwise_pair_count(valid).item() == sum(k * (k - 1) for k in n)
    assert pairwise_cosine_penalty_terms(pred, valid)[1].item() == sum(k * (k - 1) for k in n)


def test_penalty_matches_loop_reference():
    for seed, masks in [(11, "none"), (12, "valid"), (13, "valid")]:
        h, _, valid, _ = random_inputs(seed, B=3, T=6, d=4, masks=masks)
        ref_value, ref_grad, ref_count = ref_penalty(h, valid)
        value, (grad,) = grad_of(lambda x: pairwise_cosine_penalty(x, valid), h)
        assert abs(value.item() - ref_value) < TOL
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=TOL)
        cosine_sum, count = pairwise_cosine_penalty_terms(h, valid)
        assert count.item() == ref_count and abs(cosine_sum.item() - ref_value * ref_count) < TOL * ref_count


def test_penalty_degenerate_inputs():
    # float32 and d=33: sizes at which |sum u|^2 - sum |u|^2 alone leaves a ~1e-7 residue for one valid token
    h = torch.randn(2, 16, 33, generator=torch.Generator().manual_seed(0))
    one_valid = torch.zeros(2, 16, dtype=torch.bool)
    one_valid[:, 3] = True
    for valid in (torch.zeros(2, 16, dtype=torch.bool), one_valid):
        value, (grad,) = grad_of(lambda x: pairwise_cosine_penalty(x, valid), h)
        assert value.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
        assert pairwise_cosine_penalty_terms(h, valid)[1].item() == 0
    h = h.double()
    h[0, 1] = 0.0
    value, (grad,) = grad_of(pairwise_cosine_penalty, h)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    same = torch.ones(1, 5, 3)  # identical directions: mean cosine is 1 (the collapsed cone)
    assert abs(pairwise_cosine_penalty(same).item() - 1.0) < 1e-6


# ---------------------------------------------------------------------------- input errors
def test_input_errors():
    x = torch.randn(2, 5, 4)
    bool_mask = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="must be 3-D"):
        nitp_loss(x[0], x[0])
    with pytest.raises(ValueError, match="shape mismatch"):
        nitp_loss(x, torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="valid must have shape \\(2, 5\\)"):
        nitp_loss(x, x, valid=bool_mask[:, :4])
    with pytest.raises(ValueError, match="valid must be a bool tensor"):
        nitp_loss(x, x, valid=bool_mask.float())
    with pytest.raises(ValueError, match="pair_valid must have shape \\(2, 4\\)"):
        nitp_loss(x, x, pair_valid=bool_mask)
    with pytest.raises(ValueError, match="pair_valid must be a bool tensor"):
        nitp_loss(x, x, pair_valid=bool_mask[:, :4].long())
    for shift in (-1, 5, 1.0, True):
        with pytest.raises(ValueError, match="0 <= shift < T = 5"):
            nitp_loss(x, x, shift=shift)
    with pytest.raises(ValueError, match=r"unknown loss_type 'l2'.*cosine.*mse.*smooth_l1.*kl"):
        nitp_loss(x, x, loss_type="l2")
    with pytest.raises(ValueError, match="h must be 3-D"):
        pairwise_cosine_penalty(x[0])
    with pytest.raises(ValueError, match="valid must be a bool tensor"):
        pairwise_cosine_penalty(x, valid=bool_mask.int())


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_nan_and_inf_at_uncounted_positions_do_not_reach_loss_or_gradient(loss_type):
    """Whatever an uncounted position holds (NaN, inf), the loss is that of the clean input and its gradient is
    exactly zero there (the docstring's promise): masked values never enter the arithmetic."""
    pred, target, valid, pair_valid = random_inputs(7, B=2, T=6, d=5, shift=1, masks="valid+pair")
    clean_loss, (clean_grad,) = grad_of(lambda p: nitp_loss(p, target, valid, 1, loss_type, True, pair_valid), pred)
    counted = counted_pairs(valid, 1, pair_valid)
    dirty_pred, dirty_target = pred.clone(), target.clone()
    uncounted = (~counted).nonzero().tolist()
    assert uncounted, "the random masks leave some pairs uncounted"
    for i, (b, t) in enumerate(uncounted):
        dirty_pred[b, t] = float("nan") if i % 2 else float("inf")
        dirty_target[b, t + 1] = float("nan")
    loss, (grad,) = grad_of(lambda p: nitp_loss(p, dirty_target, valid, 1, loss_type, True, pair_valid), dirty_pred)
    assert torch.isfinite(loss) and abs(loss.item() - clean_loss.item()) < TOL
    assert torch.isfinite(grad).all() and torch.equal(grad, clean_grad)
    for b, t in uncounted:
        assert (grad[b, t] == 0).all()


def test_nan_at_invalid_positions_does_not_reach_the_penalty():
    h, _, valid, _ = random_inputs(8, B=2, T=6, d=4, masks="valid")
    clean, (clean_grad,) = grad_of(lambda x: pairwise_cosine_penalty(x, valid), h)
    dirty = h.clone()
    dirty[~valid] = float("nan")
    value, (grad,) = grad_of(lambda x: pairwise_cosine_penalty(x, valid), dirty)
    assert abs(value.item() - clean.item()) < TOL and torch.equal(grad, clean_grad) and (grad[~valid] == 0).all()
