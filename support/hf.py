"""support/hf.py: NITP on a Hugging Face transformers causal LM (continued pre-training with its Trainer).

NITP (docs/method.md) needs two tensors of one forward pass: h, the final hidden state the LM head reads (after
the final norm), and z, the residual stream after a shallow block k. A transformers model gives both through
`output_hidden_states=True`; this file maps that tuple to h and z, computes nitp_loss.py's (sum, count) on it
with the same shift, masks and stop-gradient as train.py, and trains the projector with the model in
transformers' Trainer (NITPTrainer), saving it BESIDE the model, never inside it (docs/hf.md).

The mapping, read in transformers 5's modeling code and checked numerically by tests/test_hf.py against forward
hooks (ARCHITECTURES lists the supported model types):

    hidden_states[0]         the embedding output, the input of block 1 (GPT-2: dropout(wte + wpe))
    hidden_states[k]         the output of block k (the residual stream after block k), 1 <= k < n_layers
    hidden_states[n_layers]  the FINAL NORM's output (= last_hidden_state, what lm_head reads): transformers'
                             capture_outputs replaces the last block's output by last_hidden_state, unless the
                             config sets tie_last_hidden_states=False, in which case it is the last block's output

So z_k = hidden_states[k] for k < n_layers (model.py's layers[k], the same numbering), and h (attach="post_norm")
= hidden_states[-1], or the final norm applied to it when tie_last_hidden_states=False. The residual after the
LAST block (target_layer = n_layers, or attach="pre_norm") is not in the tuple by default: nitp_terms and
NITPTrainer catch it as the final norm's input with a forward hook (capture_final_residual) and pass it on.

Import cost: torch and nitp_loss only; transformers and safetensors are imported inside the functions that
need them, so this module imports without them. NITPTrainer (the Trainer subclass) is built on first access.
Nothing runs at import.
"""

import contextlib
import json
import math
import os
import warnings
from dataclasses import dataclass

import torch

from nitp_loss import HEAD_KINDS, LOSS_TYPES, NITPHead, counted_pairs, nitp_loss_terms, nitp_pair_mask

PROJECTOR_WEIGHTS = "nitp_projector.safetensors"  # written beside the model, never inside model.safetensors
PROJECTOR_CONFIG = "nitp_projector.json"
ATTACH = ("post_norm", "pre_norm")
TARGET_FRACTION = 0.2  # default target layer: round(0.2 * n_layers), model.GPTConfig.nitp_defaults' rule


@dataclass(frozen=True)
class Arch:
    """Where a *ForCausalLM keeps its decoder: model.<backbone>.<layers>[i] is block i + 1, model.<backbone>.<norm>
    the final norm; `embedding` says what hidden_states[0] is."""
    backbone: str
    layers: str
    norm: str
    embedding: str


_LLAMA_LIKE = Arch("model", "layers", "norm", "embed_tokens(input_ids)")
# model_type -> layout; each one's hidden_states convention is the module docstring's (verified, tests/test_hf.py)
ARCHITECTURES = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gpt2": Arch("transformer", "h", "ln_f", "drop(wte(input_ids) + wpe(positions))"),
}


# ---------------------------------------------------------------------------- the architecture
def unwrap(model):
    """The transformers model inside a DistributedDataParallel-style wrapper (`.module`), else `model`."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model


def architecture(model) -> Arch:
    """The layout of `model`'s model_type; ValueError for one whose hidden_states convention was not verified."""
    model = unwrap(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"NITP's hidden-state mapping is verified for model_type in {sorted(ARCHITECTURES)}, not "
                         f"{model_type!r} ({type(model).__name__}); check which hidden_states entry is the embedding "
                         "output, which is after block k and whether the last one is after the final norm, then add "
                         "it to support/hf.py's ARCHITECTURES with a test in tests/test_hf.py")
    return ARCHITECTURES[model_type]


def num_layers(model) -> int:
    return int(unwrap(model).config.num_hidden_layers)


def final_norm(model) -> torch.nn.Module:
    """The final norm module (its output is what lm_head reads)."""
    arch = architecture(model)
    return getattr(getattr(unwrap(model), arch.backbone), arch.norm)


def last_entry_is_post_norm(model) -> bool:
    """Whether hidden_states[-1] is the final norm's output (transformers' default) rather than the last block's."""
    tie = getattr(unwrap(model).config, "tie_last_hidden_states", None)
    return True if tie is None else bool(tie)


def default_target_layer(n_layers: int) -> int:
    """round(0.2 * n_layers), the repo's rule of thumb (model.GPTConfig.nitp_defaults)."""
    return round(TARGET_FRACTION * n_layers)


def resolve_target_layer(target_layer: int | None, n_layers: int) -> int:
    """target_layer in [0, n_layers] (0 = embedding output, k = after block k); None: the rule of thumb; a negative
    one counts from the top over the n_layers + 1 taps, like GPTConfig.nitp_defaults (-1 = after the last block)."""
    if target_layer is None:
        return default_target_layer(n_layers)
    if isinstance(target_layer, bool) or not isinstance(target_layer, int):
        raise ValueError(f"target_layer must be an int or None, got {target_layer!r}")
    k = target_layer + n_layers + 1 if target_layer < 0 else target_layer
    if not 0 <= k <= n_layers:
        raise ValueError(f"target_layer={target_layer} is outside [0, n_layers={n_layers}] (0 = embedding output, "
                         f"k = after block k, -1 = after the last block); pass one in that range")
    return k


def needs_final_residual(model, target_layer: int | None, attach: str = "post_norm") -> bool:
    """Whether NITP needs the residual after the last block, which hidden_states holds only when the config sets
    tie_last_hidden_states=False (attach="pre_norm" or target_layer = n_layers)."""
    k = resolve_target_layer(target_layer, num_layers(model))
    return last_entry_is_post_norm(model) and (attach == "pre_norm" or k == num_layers(model))


@contextlib.contextmanager
def capture_final_residual(model):
    """Within the block, every forward of `model` stores the final norm's input (the residual after the last
    block, with its gradient) in the yielded dict under "residual"."""
    captured = {}
    handle = final_norm(model).register_forward_hook(lambda module, args, output: captured.update(residual=args[0]))
    try:
        yield captured
    finally:
        handle.remove()


# ---------------------------------------------------------------------------- h and z
def _check_attach(attach):
    if attach not in ATTACH:
        raise ValueError(f"attach={attach!r}; use one of {ATTACH} (post_norm: h is what the LM head reads)")


def nitp_hidden(model, outputs, target_layer: int | None = None, attach: str = "post_norm", final_residual=None):
    """(h, z), both (B, T, d), from the outputs of `model(..., output_hidden_states=True)`: h the final hidden state
    after the final norm (attach="post_norm", what the LM head reads) or the residual after the last block
    ("pre_norm"), z the residual stream after block target_layer (0 = embedding output; None: round(0.2 n_layers)).
    Neither is detached. final_residual: the final norm's input (capture_final_residual), needed only where the
    tuple lacks it (needs_final_residual). ValueError for an unsupported architecture or missing hidden states."""
    _check_attach(attach)
    architecture(model)
    n = num_layers(model)
    k = resolve_target_layer(target_layer, n)
    hidden = outputs.get("hidden_states") if isinstance(outputs, dict) else getattr(outputs, "hidden_states", None)
    if hidden is None or len(hidden) != n + 1 or any(x is None for x in hidden):
        got = "none" if hidden is None else f"{len(hidden)} entries"
        raise ValueError(f"NITP needs all {n + 1} hidden states (embedding output + one per block); got {got}: "
                         "call the model with output_hidden_states=True")
    post_norm_last = last_entry_is_post_norm(model)
    residual_last = None if post_norm_last else hidden[n]  # the last block's output, when the tuple keeps it
    if residual_last is None and (attach == "pre_norm" or k == n):
        if final_residual is None:
            raise ValueError(f"hidden_states[{n}] is the final norm's output, so the residual after the last block "
                             f"(attach='pre_norm' or target_layer={n}) is not in it: run the forward inside "
                             "capture_final_residual(model) and pass final_residual=captured['residual'] "
                             "(nitp_terms does this)")
        residual_last = final_residual
    h = (hidden[n] if post_norm_last else final_norm(model)(hidden[n])) if attach == "post_norm" else residual_last
    z = hidden[k] if k < n else residual_last
    return h, z


# ---------------------------------------------------------------------------- which pairs count
def _check_shift(shift):
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
        raise ValueError(f"shift must be an int >= 0, got {shift!r}; the paper uses shift=1 (0: the current step)")


def nitp_masks(input_ids, attention_mask=None, shift: int = 1, separator: int | None = None):
    """(valid (B, T) bool or None, pair_valid (B, T - shift) bool or None) for nitp_loss_terms: valid marks real
    tokens (attention_mask.bool(): a pair counts only if both ends are real), pair_valid drops pairs that cross a
    document separator (nitp_loss.nitp_pair_mask). Needs T > shift."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T) token ids, got shape {tuple(input_ids.shape)}")
    valid = None
    if attention_mask is not None:
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask must be the (B, T) 0/1 padding mask of input_ids "
                             f"{tuple(input_ids.shape)}, got shape {tuple(attention_mask.shape)}")
        valid = attention_mask.bool()
    pair_valid = nitp_pair_mask(input_ids, shift, separator) if separator is not None else None
    return valid, pair_valid


def nitp_pair_count(input_ids, attention_mask=None, shift: int = 1, separator: int | None = None) -> torch.Tensor:
    """0-dim int64: the pairs NITP counts on this batch, known before the forward pass (0 when T <= shift)."""
    _check_shift(shift)
    if input_ids.shape[1] <= shift:
        return torch.zeros((), dtype=torch.long, device=input_ids.device)
    valid, pair_valid = nitp_masks(input_ids, attention_mask, shift, separator)
    if valid is None:
        valid = torch.ones_like(input_ids, dtype=torch.bool)
    return counted_pairs(valid, shift, pair_valid).sum()


# ---------------------------------------------------------------------------- the loss terms
def _projector_dtype(projector, fallback):
    param = next(iter(projector.parameters()), None)
    return fallback if param is None else param.dtype


def nitp_terms_from_outputs(model, projector, outputs, input_ids, attention_mask=None, target_layer=None, shift=1,
                            loss_type="cosine", stop_grad=True, separator=None, attach="post_norm",
                            final_residual=None):
    """(loss_sum, pair_count) of NITP on the outputs of a forward pass with output_hidden_states=True (nitp_terms'
    arguments; final_residual: see nitp_hidden)."""
    _check_shift(shift)
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
    h, z = nitp_hidden(model, outputs, target_layer, attach, final_residual)
    if tuple(h.shape[:2]) != tuple(input_ids.shape):
        raise ValueError(f"hidden states {tuple(h.shape)} do not match input_ids {tuple(input_ids.shape)}")
    pred = projector(h.to(_projector_dtype(projector, h.dtype)))  # (B, T, d)
    if input_ids.shape[1] <= shift:  # no pair: an exact 0 whose gradient is 0 (not None) for every weight
        none = torch.zeros(pred.shape[:-1], dtype=torch.bool, device=pred.device)
        zero = torch.where(none, pred[..., 0].float(), torch.zeros((), device=pred.device)).sum()
        return zero, torch.zeros((), dtype=torch.long, device=pred.device)
    valid, pair_valid = nitp_masks(input_ids, attention_mask, shift, separator)
    return nitp_loss_terms(pred, z, valid, shift, loss_type, stop_grad, pair_valid)


def nitp_terms(model, projector, input_ids, attention_mask=None, target_layer=None, shift=1, loss_type="cosine",
               stop_grad=True, separator=None, attach="post_norm"):
    """(loss_sum, pair_count), both 0-dim, of NITP on one forward pass of the transformers causal LM `model`:
    loss(projector(h_t), z_{t+shift}) summed over the counted pairs, z the residual after block target_layer
    (None: round(0.2 n_layers)). Pairs count as in nitp_loss.py: both ends real tokens (attention_mask), not across
    a document separator (the separator id, e.g. the tokenizer's eos), none when T <= shift (then an exact 0 with a
    zero gradient). stop_grad detaches z. Divide by the count (or a global one) for the mean."""
    with capture_final_residual(model) if needs_final_residual(model, target_layer, attach) else \
            contextlib.nullcontext({}) as captured:
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return nitp_terms_from_outputs(model, projector, outputs, input_ids, attention_mask, target_layer, shift,
                                   loss_type, stop_grad, separator, attach, captured.get("residual"))


# ---------------------------------------------------------------------------- the projector, saved beside the model
def build_projector(model, kind: str = "swiglu", hidden: int | None = None) -> NITPHead:
    """NITPHead for `model`: d_model = config.hidden_size, the model's init std (config.initializer_range)."""
    config = unwrap(model).config
    return NITPHead(config.hidden_size, hidden, kind, init_std=getattr(config, "initializer_range", 0.02))


def projector_meta(projector: NITPHead, d_model: int) -> dict:
    """What rebuilds `projector`: {"d_model", "hidden", "kind"} (hidden None unless kind is swiglu)."""
    kind = projector.kind
    return {"d_model": int(d_model), "hidden": projector.w_gate.out_features if kind == "swiglu" else None,
            "kind": kind}


def save_projector(projector: NITPHead, folder, d_model: int, **meta) -> None:
    """FOLDER/nitp_projector.safetensors (weights only) and FOLDER/nitp_projector.json (projector_meta plus `meta`,
    e.g. target_layer and lambda): beside a model's save_pretrained files, never inside its weights."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    state = {name: t.detach().cpu().contiguous() for name, t in projector.state_dict().items()}
    save_file(state, os.path.join(folder, PROJECTOR_WEIGHTS), metadata={"format": "pt"})
    info = {**projector_meta(projector, d_model), **meta, "written_by": "support/hf.py"}
    with open(os.path.join(folder, PROJECTOR_CONFIG), "w") as f:
        json.dump(info, f, indent=2)


def load_projector(folder, device="cpu") -> tuple[NITPHead, dict]:
    """(NITPHead with the saved weights, the json's fields) from save_projector's two files in `folder`."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, PROJECTOR_CONFIG)) as f:
        meta = json.load(f)
    projector = NITPHead(meta["d_model"], meta["hidden"], meta["kind"])
    projector.load_state_dict(load_file(os.path.join(folder, PROJECTOR_WEIGHTS), device="cpu"))
    return projector.to(device), meta


# ---------------------------------------------------------------------------- Trainer
@dataclass(frozen=True)
class NITPConfig:
    """NITPTrainer's switches; names as config.ObjectiveConfig's."""
    nitp_weight: float = 1.0            # lambda: loss = CE + nitp_weight * L_NITP
    target_layer: int | None = None     # z = after block k (0 = embedding); None: round(0.2 * n_layers)
    shift: int = 1                      # h_t predicts z_{t+shift}
    loss_type: str = "cosine"           # cosine | mse | smooth_l1 | kl
    stop_grad: bool = True              # no gradient into the target
    attach: str = "post_norm"           # h after the final norm | pre_norm: after the last block
    separator: int | None = None        # document separator id (e.g. tokenizer.eos_token_id): no pair crosses it
    projector: str = "swiglu"           # swiglu | linear | none
    projector_hidden: int | None = None  # swiglu width; None: 4 * d_model

    def check(self):
        _check_shift(self.shift)
        _check_attach(self.attach)
        for ok, message in [(self.loss_type in LOSS_TYPES, f"loss_type={self.loss_type!r}; use one of {LOSS_TYPES}"),
                            (self.projector in HEAD_KINDS, f"projector={self.projector!r}; use one of {HEAD_KINDS}"),
                            (isinstance(self.nitp_weight, int | float) and math.isfinite(self.nitp_weight)
                             and self.nitp_weight >= 0,
                             f"nitp_weight={self.nitp_weight} must be a finite number >= 0")]:
            if not ok:
                raise ValueError(message)


class NITPTrainerMixin:
    """Adds NITP to a transformers Trainer (NITPTrainer = NITPTrainerMixin + Trainer; mix it into a Trainer
    subclass the same way). One forward pass with output_hidden_states=True: the CE the model returns for `labels`
    plus nitp_weight * L_NITP (training only; evaluation reports the plain CE). The projector is the trainer's
    `nitp_projector`, not a submodule of the model: its parameters join the optimizer (create_optimizer) and the
    gradient clipping, it is saved beside the model (save_model, every checkpoint) and loaded back on resume, and
    the model's own weights and save_pretrained files are exactly a plain model's. L_NITP is normalised as the CE
    is: when the CE is divided by the optimizer step's token count (num_items_in_batch: gradient accumulation, and
    all processes' tokens with average_tokens_across_devices), L_NITP is divided by the step's pair count (all
    processes' likewise), as train.py does; otherwise by the micro-batch's. One process, or DDP (the projector is
    then wrapped in DDP of its own); FSDP and DeepSpeed are refused (the projector is outside their model)."""

    def __init__(self, *args, nitp: NITPConfig | None = None, nitp_projector: NITPHead | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.nitp = NITPConfig() if nitp is None else nitp
        self.nitp.check()
        if self.model is None:
            raise ValueError("NITPTrainer needs model=... (model_init is not supported)")
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError("NITPTrainer supports one process or DDP: under FSDP or DeepSpeed the projector, which "
                             "lives outside the model, would be neither sharded nor synchronised")
        architecture(self.model)  # ValueError now, not at the first step
        self.nitp_target_layer = resolve_target_layer(self.nitp.target_layer, num_layers(self.model))
        if nitp_projector is None:
            nitp_projector = build_projector(self.model, self.nitp.projector, self.nitp.projector_hidden)
        d_model = unwrap(self.model).config.hidden_size
        self.nitp_projector = nitp_projector.to(self.args.device)
        self._nitp_d_model = d_model
        self._nitp_ddp = None  # the projector wrapped in DDP under data parallelism, built at the first step
        self._nitp_step_pairs = None  # pairs of the optimizer step being accumulated (get_batch_samples)
        self._nitp_log_sum, self._nitp_log_step = 0.0, None  # the step of the last log (None: not trained yet)
        if self.optimizer is not None and self._nitp_missing_params(self.optimizer):
            raise ValueError("the optimizer passed in optimizers=(...) lacks the projector's parameters: build it "
                             "first (projector = support.hf.build_projector(model)), give the optimizer "
                             "model and projector parameters, and pass nitp_projector=projector")

    # ---- optimizer and clipping: the projector is trained with the model
    def _nitp_params(self):
        return [p for p in self.nitp_projector.parameters() if p.requires_grad]

    def _nitp_missing_params(self, optimizer):
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        return [p for p in self._nitp_params() if id(p) not in known]

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        missing = self._nitp_missing_params(optimizer)
        for params, decay in (([p for p in missing if p.dim() >= 2], self.args.weight_decay),
                              ([p for p in missing if p.dim() < 2], 0.0)):  # train.py's split: decay matrices only
            if params:
                optimizer.add_param_group({"params": params, "weight_decay": decay})
        return optimizer

    def _clip_grad_norm(self, model):
        """The Trainer's clipping over the model AND the projector (train.py clips them together)."""
        params = self._nitp_params()
        if not params or self._has_mixed_mesh_grads(model) or hasattr(self.optimizer, "clip_master_grads"):
            return super()._clip_grad_norm(model)
        return self.accelerator.clip_grad_norm_([*model.parameters(), *params], self.args.max_grad_norm)

    # ---- the loss
    def get_batch_samples(self, *args, **kwargs):
        """The Trainer's micro-batches of one optimizer step; also the step's pair count, and a fresh start for the
        projector's gradients (the Trainer zeroes only model.zero_grad(), never a module outside the model)."""
        self.nitp_projector.zero_grad(set_to_none=True)
        batch_samples, num_items_in_batch = super().get_batch_samples(*args, **kwargs)
        counts = [nitp_pair_count(b["input_ids"], b.get("attention_mask"), self.nitp.shift, self.nitp.separator)
                  for b in batch_samples if "input_ids" in b]
        pairs = sum(counts) if counts else None
        if pairs is not None and self._nitp_across_processes():  # every process's pairs, as for the CE's tokens
            pairs = self.accelerator.gather(pairs.to(self.args.device)).sum()
        self._nitp_step_pairs = pairs
        return batch_samples, num_items_in_batch

    def _nitp_across_processes(self) -> bool:
        """Whether the step's mean is over all processes' pairs (average_tokens_across_devices, as the CE's)."""
        return bool(getattr(self.args, "average_tokens_across_devices", False)) and self.args.world_size > 1

    def _nitp_loss_is_scaled(self, num_items_in_batch) -> bool:
        """Whether the CE is normalised over the whole accumulated step (as Trainer.training_step decides)."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is not None:
            return bool(scaled)
        return bool((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                    or self.compute_loss_func is not None)

    def _nitp_projector_call(self):
        """The projector as the forward uses it: wrapped in DDP when gradients are averaged over processes."""
        from transformers.training_args import ParallelMode

        if self.args.parallel_mode != ParallelMode.DISTRIBUTED or self.args.world_size <= 1:
            return self.nitp_projector
        if self._nitp_ddp is None and self._nitp_params():
            device_ids = [self.args.device] if self.args.device.type == "cuda" else None
            self._nitp_ddp = torch.nn.parallel.DistributedDataParallel(self.nitp_projector, device_ids=device_ids)
        return self.nitp_projector if self._nitp_ddp is None else self._nitp_ddp

    def training_step(self, *args, **kwargs):
        ddp = self._nitp_projector_call()
        no_sync = isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and not self.accelerator.sync_gradients
        with ddp.no_sync() if no_sync else contextlib.nullcontext():  # the model skips its all-reduce then too
            return super().training_step(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation: the plain CE, comparable with any other run
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if "input_ids" not in inputs:
            raise ValueError("NITPTrainer needs input_ids in every batch (its pairs and separators are token ids)")
        cfg, base = self.nitp, self.accelerator.unwrap_model(model)
        k = self.nitp_target_layer
        with capture_final_residual(base) if needs_final_residual(base, k, cfg.attach) else \
                contextlib.nullcontext({}) as captured:
            loss, outputs = super().compute_loss(model, {**inputs, "output_hidden_states": True}, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
        device = inputs["input_ids"].device
        if next(iter(self.nitp_projector.parameters()), torch.empty(0, device=device)).device != device:
            self.nitp_projector.to(device)  # before the first optimizer step: the parameters stay the same objects
        with self.accelerator.autocast():
            nitp_sum, count = nitp_terms_from_outputs(
                base, self._nitp_projector_call(), outputs, inputs["input_ids"], inputs.get("attention_mask"), k,
                cfg.shift, cfg.loss_type, cfg.stop_grad, cfg.separator, cfg.attach, captured.get("residual"))
        if self._nitp_log_step is None:  # the first step of this train() call (a resumed run starts past 0)
            self._nitp_log_step = self.state.global_step
        scaled = self._nitp_loss_is_scaled(num_items_in_batch)
        denominator = self._nitp_step_pairs if scaled and self._nitp_step_pairs is not None else count
        nitp = nitp_sum / torch.as_tensor(denominator, device=nitp_sum.device).clamp(min=1)
        if scaled and self._nitp_step_pairs is not None and self._nitp_across_processes():
            nitp = nitp * self.args.world_size  # DDP averages the gradients over processes: this makes it a sum
        # for the log: this micro-batch's share of the step's mean (its mean over processes, under DDP)
        self._nitp_log_sum += nitp.detach() if scaled else nitp.detach() / self.current_gradient_accumulation_steps
        loss = loss + cfg.nitp_weight * nitp.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        last = self.state.global_step if self._nitp_log_step is None else self._nitp_log_step
        steps = self.state.global_step - last
        if "loss" in logs and steps > 0:  # a training log (every process): the mean L_NITP since the last one
            value = torch.as_tensor(self._nitp_log_sum, dtype=torch.float32, device=self.args.device).reshape(1)
            if self.args.world_size > 1:
                value = self.accelerator.gather(value).mean()
            logs = {**logs, "nitp_loss": round(value.item() / steps, 6)}
            self._nitp_log_sum, self._nitp_log_step = 0.0, self.state.global_step
        return super().log(logs, *args, **kwargs)

    # ---- saving and resuming: the projector beside the model
    def nitp_meta(self) -> dict:
        cfg = self.nitp
        return {"target_layer": self.nitp_target_layer, "lambda": cfg.nitp_weight, "shift": cfg.shift,
                "loss_type": cfg.loss_type, "stop_grad": cfg.stop_grad, "attach": cfg.attach,
                "separator": cfg.separator}

    def save_model(self, output_dir=None, _internal_call=False):
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            save_projector(self.nitp_projector, output_dir or self.args.output_dir, self._nitp_d_model,
                           **self.nitp_meta())

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if not os.path.isfile(os.path.join(resume_from_checkpoint, PROJECTOR_WEIGHTS)):
            warnings.warn(f"{resume_from_checkpoint} has no {PROJECTOR_WEIGHTS} (not written by NITPTrainer?): "
                          "the projector starts from its initialisation", stacklevel=2)
        else:
            saved, meta = load_projector(resume_from_checkpoint)
            mine = projector_meta(self.nitp_projector, self._nitp_d_model)
            if {key: meta.get(key) for key in mine} != mine:
                raise ValueError(f"{resume_from_checkpoint} holds a projector {meta}, this trainer's is {mine}")
            self.nitp_projector.load_state_dict(saved.state_dict())


def nitp_trainer_class(base=None):
    """NITPTrainerMixin mixed into `base` (default transformers.Trainer)."""
    if base is None:
        from transformers import Trainer as base
    return type(f"NITP{base.__name__}", (NITPTrainerMixin, base),
                {"__doc__": NITPTrainerMixin.__doc__, "__module__": __name__})


_LAZY = {}


def __getattr__(name):  # NITPTrainer is built (transformers imported) on first access, not at import
    if name == "NITPTrainer":
        if name not in _LAZY:
            _LAZY[name] = nitp_trainer_class()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
