"""nitp_loss.py: the NITP auxiliary objective, its projector head, and the ablations' alternatives.

NITP (Next Implicit Token Prediction; docs/method.md, "Objective") trains a decoder-only LM on

    L_total = L_NTP + lambda * L_NITP,    L_NITP = mean over counted pairs of loss(P(h_t), z_{t+shift})

* pred   = P(h_t), (B, T, d): the final hidden state (after the final norm) passed through the projector
  NITPHead, a SwiGLU MLP used only during training.
* target = z, (B, T, d): the residual stream after a shallow block k of the same forward pass (the
  "implicit token"). stop_grad=True detaches it, as the paper does: L_NITP moves h_t towards z, never
  z towards h_t (gradient still reaches blocks 1..k through h_t).

Shift and masking. Position t of pred pairs with position t + shift of target (the paper: shift=1;
shift=0 is the "current step" ablation). So the last `shift` positions of pred and the first `shift`
positions of target never count. A pair (t, t + shift) counts only when valid[b, t] and
valid[b, t + shift] are both True and, if given, pair_valid[b, t] is True (train.py uses it to drop
pairs that cross a document separator). The loss is the mean over counted pairs; zero counted pairs
give 0 with a zero gradient. `nitp_loss_terms` returns (sum, count) so that train.py can divide by a
global count under gradient accumulation / data parallelism (docs/method.md, "Shift and masking").

loss_type, for one pair p = pred[b, t], z = target[b, t + shift], both in R^d:
  cosine     1 - <p, z> / (max(|p|, eps) * max(|z|, eps)),  eps = 1e-8 (the paper's loss; a zero vector
             gets cosine 0 with everything instead of 0/0, so loss and gradient stay finite)
  mse        (1/d) sum_i (p_i - z_i)^2
  smooth_l1  (1/d) sum_i huber(p_i - z_i), huber(e) = e^2/2 if |e| < 1 else |e| - 1/2  (beta = 1)
  kl         KL(q || p~) = sum_i q_i (log q_i - log p~_i),  q = softmax(z), p~ = softmax(p) over the d
             features: the target's "distribution" is the reference, the prediction is scored against it
The loss is computed in at least float32, whatever the input dtype: under bf16 autocast the values near
convergence (1 - cos ~ 0.03) would otherwise be rounded to a few per cent.

pairwise_cosine_penalty is the ablation table's "generic regulariser": the mean cosine over all ordered
pairs (i, j), i != j, of valid positions of the same sequence; minimising it pushes tokens apart.

Imports only torch. Nothing runs at import.
"""

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8  # norm clamp of the cosine: |x| < EPS is treated as |x| = EPS (zero vectors stay finite)
HEAD_KINDS = ("swiglu", "linear", "none")


# ---------------------------------------------------------------------------- projector
class NITPHead(nn.Module):
    """Projector P applied to h_t before the comparison (docs/method.md, "Projector"); dropped after pre-training.

    kind "swiglu": w_down(silu(w_gate h) * w_up h), hidden width 4 * d_model by default, no biases:
                   3 * d_model * hidden parameters (12 d^2, the paper's head);
         "linear": one d -> d matrix, no bias (d^2 parameters);
         "none":   identity, no parameters (the "no projector" ablation).
    Weights are drawn from N(0, init_std^2), the model's init (docs/method.md, "Open choices")."""

    def __init__(self, d_model: int, hidden: int | None = None, kind: str = "swiglu", init_std: float = 0.02):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"unknown NITPHead kind {kind!r}; choose one of {HEAD_KINDS}")
        if hidden is not None and kind != "swiglu":
            raise ValueError(f"hidden={hidden} only applies to kind='swiglu', not {kind!r}; pass hidden=None")
        hidden = 4 * d_model if hidden is None else hidden
        if d_model < 1 or hidden < 1:
            raise ValueError(f"NITPHead needs d_model >= 1 and hidden >= 1, got d_model={d_model}, hidden={hidden}")
        self.kind = kind
        if kind == "swiglu":
            self.w_gate = nn.Linear(d_model, hidden, bias=False)
            self.w_up = nn.Linear(d_model, hidden, bias=False)
            self.w_down = nn.Linear(hidden, d_model, bias=False)
        elif kind == "linear":
            self.proj = nn.Linear(d_model, d_model, bias=False)
        for weight in self.parameters():
            nn.init.normal_(weight, std=init_std)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., d)
        if self.kind == "swiglu":
            return self.w_down(F.silu(self.w_gate(h)) * self.w_up(h))
        if self.kind == "linear":
            return self.proj(h)
        return h

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


# ---------------------------------------------------------------------------- per-pair losses
# Each maps p, z of shape (N..., d) to the per-pair loss (N...,), exactly as defined in the module docstring.
def _cosine(p, z):
    return 1.0 - (F.normalize(p, dim=-1, eps=EPS) * F.normalize(z, dim=-1, eps=EPS)).sum(-1)


def _mse(p, z):
    return (p - z).square().mean(-1)


def _smooth_l1(p, z):
    return F.smooth_l1_loss(p, z, reduction="none", beta=1.0).mean(-1)


def _kl(p, z):
    log_q, log_p = F.log_softmax(z, dim=-1), F.log_softmax(p, dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


PAIR_LOSSES = {"cosine": _cosine, "mse": _mse, "smooth_l1": _smooth_l1, "kl": _kl}
LOSS_TYPES = tuple(PAIR_LOSSES)


# ---------------------------------------------------------------------------- input checks
def _check_mask(name, mask, shape, fix):
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got dtype {mask.dtype}; {fix}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}; {fix}")


def _valid_or_all(valid, B, T, device):
    """The (B, T) bool mask of real tokens; all True when valid is None."""
    if valid is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    _check_mask("valid", valid, (B, T), "pass a (B, T) bool mask of real tokens, e.g. tokens != pad_id")
    return valid


def _compute_dtype(*tensors):
    """At least float32 (see module docstring), float64 stays float64."""
    dtype = torch.float32
    for x in tensors:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


# ---------------------------------------------------------------------------- which pairs count
def counted_pairs(valid, shift, pair_valid=None):
    """(B, T - shift) bool: pair (t, t + shift) counts when valid[b, t], valid[b, t + shift] and, if given,
    pair_valid[b, t]. The one definition of the pairing; its sum is the count the loss is averaged over."""
    T = valid.shape[1]
    counted = valid[:, :T - shift] & valid[:, shift:]  # both ends are real tokens
    return counted & pair_valid if pair_valid is not None else counted


def document_pair_mask(tokens, shift, separator):
    """(B, T - shift) bool for tokens (B, T): False where pair (h_t, z_{t+shift}) crosses a document boundary.
    Every document ENDS with the separator (data.py's <|endoftext|>), so a pair crosses when the separator
    lies in tokens[t : t + shift]: h at the separator has seen only the old document, z_{t+1} is the next
    document's first token. The pair (last token, separator) stays: that a document ends is part of it, and
    next-token prediction predicts it too. shift=0 pairs a position with itself and never crosses."""
    T = tokens.shape[1]
    if shift == 0:
        return torch.ones_like(tokens, dtype=torch.bool)
    separators_before = F.pad((tokens == separator).long().cumsum(dim=1), (1, 0))  # (B, T+1): [:, t] = in [:t]
    return separators_before[:, shift:T] == separators_before[:, :T - shift]


def nitp_pair_mask(tokens, shift, separator=None):
    """(B, T - shift) bool: the pairs NITP counts on a batch of real tokens (B, T), dropping those that cross a
    document boundary when a separator id is given. Pass it as nitp_loss_terms' pair_valid; its sum is the
    pair count, known before the forward pass (train.py divides every micro-batch by the step's global count)."""
    valid = torch.ones_like(tokens, dtype=torch.bool)
    pair_valid = document_pair_mask(tokens, shift, separator) if separator is not None else None
    return counted_pairs(valid, shift, pair_valid)


def pairwise_pair_count(valid):
    """0-dim int64: the ordered pairs i != j of valid positions within each sequence, sum_b n_b (n_b - 1): the
    count pairwise_cosine_penalty averages over. valid (B, T) bool."""
    n = valid.sum(1)  # (B,)
    return (n * (n - 1)).sum()


# ---------------------------------------------------------------------------- NITP loss
def nitp_loss_terms(pred, target, valid=None, shift=1, loss_type="cosine", stop_grad=True, pair_valid=None):
    """(loss_sum, pair_count), both 0-dim: the summed per-pair loss (float, >= float32) and the number of
    counted pairs (int64). pred, target (B, T, d); valid (B, T) bool or None; pair_valid (B, T - shift)
    bool or None. Pairing, masking and loss_type as in the module docstring."""
    if pred.dim() != 3 or target.dim() != 3:
        raise ValueError(f"pred and target must be 3-D (B, T, d), got pred {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)}; add a batch dimension with .unsqueeze(0) if needed")
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}; both must be "
                         "(B, T, d) from the same batch (project h_t to the target's width with NITPHead)")
    if loss_type not in PAIR_LOSSES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
    B, T, _ = pred.shape
    if isinstance(shift, bool) or not isinstance(shift, int) or not 0 <= shift < T:
        raise ValueError(f"shift must be an int with 0 <= shift < T = {T}, got {shift!r}; the paper uses shift=1")
    valid = _valid_or_all(valid, B, T, pred.device)
    if pair_valid is not None:
        _check_mask("pair_valid", pair_valid, (B, T - shift), "it has one entry per pair (t, t + shift)")

    dtype = _compute_dtype(pred, target)
    h = pred[:, :T - shift].to(dtype)  # (B, T - shift, d): predictions at t
    z = target[:, shift:].to(dtype)  # (B, T - shift, d): implicit tokens at t + shift
    if stop_grad:
        z = z.detach()
    counted = counted_pairs(valid, shift, pair_valid)  # (B, T - shift)
    # uncounted pairs see a harmless constant instead of their values: whatever they hold (padding, even NaN or
    # inf) gives them a zero gradient, where a product with a zero weight would give 0 * NaN = NaN
    h, z = (torch.where(counted[..., None], x, torch.ones_like(x)) for x in (h, z))
    per_pair = PAIR_LOSSES[loss_type](h, z)  # (B, T - shift)
    # where, not multiply: uncounted pairs contribute exactly 0 to the sum and a zero gradient
    loss_sum = torch.where(counted, per_pair, torch.zeros_like(per_pair)).sum()
    return loss_sum, counted.sum()


def nitp_loss(pred, target, valid=None, shift=1, loss_type="cosine", stop_grad=True, pair_valid=None):
    """Scalar mean of the per-pair loss over counted pairs (0 when none count). See nitp_loss_terms."""
    loss_sum, pair_count = nitp_loss_terms(pred, target, valid, shift, loss_type, stop_grad, pair_valid)
    return loss_sum / pair_count.clamp(min=1)


# ---------------------------------------------------------------------------- generic regulariser (ablation)
def pairwise_cosine_penalty_terms(h, valid=None):
    """(cosine_sum, pair_count), both 0-dim: the sum of cos(h_i, h_j) over ordered pairs i != j of valid
    positions of each sequence (the off-diagonal sum of the Gram matrix of normalised vectors), and the
    number of such pairs, sum_b n_b (n_b - 1). h (B, T, d); valid (B, T) bool or None.

    Computed without the (T, T) Gram matrix: sum_{i != j} <u_i, u_j> = |sum_i u_i|^2 - sum_i |u_i|^2,
    O(T d) memory instead of O(T^2), the same value."""
    if h.dim() != 3:
        raise ValueError(f"h must be 3-D (B, T, d), got shape {tuple(h.shape)}; add a batch dimension if needed")
    B, T, _ = h.shape
    valid = _valid_or_all(valid, B, T, h.device)
    h = h.to(_compute_dtype(h))
    h = torch.where(valid[..., None], h, torch.ones_like(h))  # invalid positions: no NaN can reach the gradient
    u = F.normalize(h, dim=-1, eps=EPS)  # (B, T, d), zero vectors stay zero
    u = torch.where(valid[..., None], u, torch.zeros_like(u))
    per_sequence = u.sum(1).square().sum(-1) - u.square().sum((1, 2))  # (B,)
    n = valid.sum(1)  # (B,)
    # a sequence with < 2 valid positions has no pair: exactly 0, not the identity's rounding residue
    per_sequence = torch.where(n > 1, per_sequence, torch.zeros_like(per_sequence))
    return per_sequence.sum(), pairwise_pair_count(valid)


def pairwise_cosine_penalty(h, valid=None):
    """Mean cosine over all pairs i != j of valid positions within the same sequence (0 when none)."""
    cosine_sum, pair_count = pairwise_cosine_penalty_terms(h, valid)
    return cosine_sum / pair_count.clamp(min=1)
