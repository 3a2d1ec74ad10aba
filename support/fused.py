"""fused.py: the block's elementwise chains (RoPE, RMSNorm, SwiGLU) as autograd Functions, for eager float32.

Eager PyTorch runs each elementwise op of a chain as its own pass over memory, and autograd's backward of a
chain adds more: the concatenation behind every `chunk`, negations, and for RMSNorm nine full-size ops where a
closed form needs four. On CPU these passes are what the `small` preset's blocks spend beyond matmuls and attention.

* rope: the two halves are written into one output (no `cat`), and the backward rotates the gradient by the
  opposite angle directly (no `neg`, no `cat`);
* swiglu: the backward writes d_gate and d_up into the two halves of one gradient (no `cat`);
* rms_norm: the sum of squares as one dot product, and the backward in closed form.

rope and swiglu do autograd's arithmetic in autograd's order, so a model trains to the same bits with them as
without (tests/test_fused.py). rms_norm computes the same function in another order: its outputs and gradients
agree with F.rms_norm's to float32 rounding (a few ulps; tested with a tolerance), not bit for bit.

Used only where they are a gain and what they claim above holds (`enabled`): eager, float32, no autocast. Under
torch.compile the plain formulas stay, since inductor fuses those itself; in bf16 F.rms_norm computes in
float32 internally, which these do not copy.
Imports only torch.
"""

import contextlib

import torch
import torch.nn.functional as F

_switched_off = False  # set by set_enabled (train.py --fused_kernels) and disabled()


def enabled(x: torch.Tensor) -> bool:
    """Whether the Functions below may replace the plain formulas for input x (see the module docstring)."""
    return (not _switched_off and x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type)
            and not torch.compiler.is_compiling())


def set_enabled(on: bool) -> bool:
    """The process-wide switch, train.py's --fused_kernels: off, model.py takes its plain formulas everywhere.
    Returns the previous setting."""
    global _switched_off
    before, _switched_off = not _switched_off, not on
    return before


@contextlib.contextmanager
def disabled():
    """Within it, model.py takes its plain formulas everywhere: the reference the Functions are measured and
    tested against. The autograd graph is built in the forward pass, so only the forward need run inside."""
    global _switched_off
    before, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = before


class RoPE(torch.autograd.Function):
    """out = (x1 cos - x2 sin, x1 sin + x2 cos) for the halves x1, x2 of x (..., hd), cos/sin (T, hd / 2)."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        x1, x2 = x.chunk(2, dim=-1)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous, like autograd's cat
        out1, out2 = out.chunk(2, dim=-1)
        torch.mul(x1, cos, out=out1).sub_(x2 * sin)
        torch.mul(x1, sin, out=out2).add_(x2 * cos)
        return out

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        g1, g2 = grad.chunk(2, dim=-1)
        dx = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        dx1, dx2 = dx.chunk(2, dim=-1)
        torch.mul(g1, cos, out=dx1).add_(g2 * sin)  # autograd: g1 cos + g2 sin, summed in either order
        torch.mul(g2, cos, out=dx2).sub_(g1 * sin)  # autograd: (-g1) sin + g2 cos, the same bits
        return dx, None, None


class RMSNorm(torch.autograd.Function):
    """x / sqrt(mean(x^2) + eps) * weight over the last dim. Not autograd's arithmetic (see the module docstring):
    the squares are summed by one dot product, and the backward is the closed form
    dx = rstd (gn - normed mean(gn normed)), gn = grad * weight, in four full-size passes instead of nine."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.linalg.vecdot(x, x).unsqueeze_(-1).div_(x.shape[-1]).add_(eps).rsqrt_()  # (..., 1)
        normed = x * rstd
        ctx.save_for_backward(weight, rstd, normed)  # normed, not x: the same bytes as a fused kernel keeps
        return normed * weight

    @staticmethod
    def backward(ctx, grad):
        weight, rstd, normed = ctx.saved_tensors
        grad_weight = (grad * normed).reshape(-1, normed.shape[-1]).sum(0)  # (d,), for any leading dims
        grad_x = grad * weight  # gn
        minus_mean = torch.linalg.vecdot(grad_x, normed).unsqueeze_(-1).div_(-normed.shape[-1])  # (..., 1)
        return grad_x.addcmul_(normed, minus_mean).mul_(rstd), grad_weight, None


class SwiGLU(torch.autograd.Function):
    """silu(gate) * up for gate_up = [gate | up] (..., 2 h) -> (..., h)."""

    @staticmethod
    def forward(ctx, gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        activated = F.silu(gate)
        ctx.save_for_backward(gate_up, activated)
        return activated * up

    @staticmethod
    def backward(ctx, grad):
        gate_up, activated = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad_gate_up = torch.empty_like(gate_up)
        grad_gate, grad_up = grad_gate_up.chunk(2, dim=-1)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        torch.mul(grad, activated, out=grad_up)
        return grad_gate_up
