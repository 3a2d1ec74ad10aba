"""Tests for model.py's loss head: the summed cross-entropy of GPT.forward(targets=...) and the chunked head
(model.cross_entropy_sum with recomputation) against full logits. Tolerances are given in each test."""

import pytest
import torch
import torch.nn.functional as F
from test_model import VOCAB, tiny

import model as model_lib
from model import GPT


@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_cross_entropy_equals_the_plain_head(autocast):
    """Chunks of 7 positions (uneven on purpose) with recomputation vs full logits: the same summed loss and the
    same gradients, up to float32 summation order (1e-5). Under bf16 autocast every logit and every row of the
    hidden states' gradient is one bf16 dot product either way (1e-5 still holds), but the weight's gradient
    sums over positions inside a bf16 matmul: the plain head rounds that sum once, the chunks round each
    chunk's partial sum, so they agree to a few bf16 ulps (8-bit mantissa: 2e-2 of the gradient's scale)."""
    torch.manual_seed(0)
    hidden = torch.randn(3, 10, 16, requires_grad=True)
    weight = torch.randn(97, 16, requires_grad=True)
    targets = torch.randint(0, 97, (3, 10))
    results = []
    for chunk in (0, 7):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model_lib.cross_entropy_sum(hidden, weight, targets, chunk)
        results.append((loss, *torch.autograd.grad(loss, (hidden, weight))))
    (loss, grad_hidden, grad_weight), (loss_c, grad_hidden_c, grad_weight_c) = results
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_hidden_c, grad_hidden, rtol=1e-5, atol=1e-5)
    weight_tol = 2e-2 * grad_weight.abs().max().item() if autocast else 1e-5
    torch.testing.assert_close(grad_weight_c, grad_weight, rtol=1e-5, atol=weight_tol)
    logits = (hidden @ weight.T).flatten(0, 1)
    reference = F.cross_entropy(logits, targets.flatten(), reduction="sum")
    if not autocast:
        torch.testing.assert_close(results[0][0], reference, rtol=1e-6, atol=1e-5)


def test_model_loss_with_targets_equals_cross_entropy_of_its_logits():
    torch.manual_seed(0)
    model = GPT(tiny("tiny-dense"))
    idx, y = torch.randint(0, VOCAB, (2, 12)), torch.randint(0, VOCAB, (2, 12))
    out = model(idx)
    expected = F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), reduction="sum")
    assert torch.equal(model(idx, compute_logits=False, targets=y).ce_sum, expected)  # the same GEMM, bit for bit
    chunked = model(idx, compute_logits=False, targets=y, ce_chunk=5)
    assert chunked.logits is None
    torch.testing.assert_close(chunked.ce_sum, expected, rtol=1e-6, atol=1e-4)
