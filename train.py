"""train.py: pre-train a GPT with next-token prediction plus (optionally) NITP; one file, top to bottom.

    python train.py                                   # small NITP model on the Shakespeare corpus, CPU, minutes
    python train.py --objective=ntp --max_steps=20 --device=cpu --out_dir=runs/ntp
    python train.py --preset=tiny-moe --n_layer=4 --nitp_weight=0.8 --config=run.toml
    torchrun --standalone --nproc_per_node=2 train.py   # FSDP2 over 2 processes: gloo on CPU, nccl on CUDA

Every config.TrainConfig field (objective.ObjectiveConfig's included) and every model.GPTConfig field is a
`--key=value` flag or a key of the `--config` file (TOML or JSON); flags win over the file, GPTConfig fields
apply on top of --preset; config.py checks them all before training starts. Objectives (objective.py assembles the loss; docs/method.md explains each):
  ntp     loss = CE (+ balance_coef * MoE balance loss, for every objective)
  nitp    loss = CE + nitp_weight * L_NITP(projector(h_t), layers[target_layer]_{t+shift})
  cosreg  loss = CE + nitp_weight * mean pairwise cosine of h (the paper's generic-regulariser ablation)
  mtp     loss = CE + mtp_weight * L_MTP; nextlat: CE + nextlat_weight * L_next-h + nextlat_kl_weight * L_KL (peers.py)
The loop: FSDP2 shards the model over 1 to N processes (`shard`); each step reads its slice of the global batch,
divides every micro-batch's loss by the step's global counts, and stops before the update on a non-finite loss.
Writes OUT_DIR/log.jsonl (one config line, then train and eval lines) and OUT_DIR/checkpoints/step_N/ (DCP,
checkpoint.py). Imports config, objective, model, data, metrics, memory, checkpoint and runtime; nothing imports
train.py; nothing runs at import.
"""

import contextlib
import dataclasses
import gc
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from support import checkpoint, files, flops, memory, runtime
import data
import model as model_lib
from support.metrics import (AVG_COSINE, EFFECTIVE_RANK, TARGET_AVG_COSINE, TARGET_EFFECTIVE_RANK, VAL_LOSS, aux_loss_key,
                     avg_pairwise_cosine, effective_rank)
from config import TrainConfig, check_out_dir, check_resumable, parse_config, resolve_config
from support.objective import aux_flops_kwargs, aux_logit_heads, aux_pair_masks, aux_weight, balance_weight, build_projector
from support.objective import aux_part_names, forward_terms, total_loss


# ---------------------------------------------------------------------------- optimisation
def lr_at(step, cfg):
    """Learning rate of optimizer step `step` (0-based): linear warmup, then WSD (flat, then linear down to
    min_lr_frac * lr over the last decay_frac of the steps) or cosine down to min_lr_frac * lr."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "cosine":
        progress = min(1.0, max(0.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)))
        frac = cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        decay_steps = round(cfg.decay_frac * cfg.max_steps)
        progress = min(1.0, max(0.0, (step - (cfg.max_steps - decay_steps)) / max(1, decay_steps)))
        frac = 1.0 - (1 - cfg.min_lr_frac) * progress
    return cfg.lr * min(warm, frac)


def clip_grad_norm(params, max_norm, rt=None):
    """Global L2 norm of the grads, clipped to max_norm if > 0. FSDP2's grads are DTensor shards: each process
    sums the squares of its own shard and one all-reduce adds them up. Summed one tensor at a time in a fixed
    order, so all-zero grads (the projector at nitp_weight=0) change neither the norm nor the clip, bit for bit;
    torch's stacked reduction regroups the other terms when the list grows. Same clip as torch's:
    grads *= min(1, max_norm / (norm + 1e-6))."""
    grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in params if p.grad is not None]
    total_sq = torch.zeros((), device=grads[0].device)
    for g in grads:
        total_sq = total_sq + torch.linalg.vector_norm(g, dtype=torch.float32) ** 2
    if rt is not None:
        runtime.all_reduce(total_sq, rt)
    total = total_sq.sqrt()
    if max_norm > 0:
        torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp(max=1.0))
    return total


# ---------------------------------------------------------------------------- sharding
def shard(model, projector, cfg, rt):
    """FSDP2 over all processes (1 to N): each block is a unit (compiled first with --compile, the torchtitan
    way), then the model's root (embedding, final norm, head: a tied embedding stays one parameter), then the
    projector. On CUDA the units compute in bf16 from fp32 master weights and reduce gradients in fp32, and a
    block's weights are freed after its forward (memory is what limits a GPU); on CPU they stay gathered until
    its backward, saving gloo a second all-gather per block (the README has the measured difference).
    Gradients are SUMMED over processes (divide factor 1): each micro-batch's loss is already divided by the
    step's global count, so the sum is the global mean."""
    mesh = init_device_mesh(rt.device.type, (rt.world,))
    cuda = rt.device.type == "cuda"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if cuda else None, reduce_dtype=torch.float32)
    units = []
    for block in model.blocks:
        block.activation_checkpointing = cfg.activation_checkpointing
        if cfg.compile:
            block.compile()  # in place: parameter names (and checkpoints) stay those of the eager model
        units.append(fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=cuda))
    units.append(fully_shard(model, mesh=mesh, mp_policy=policy))
    if projector is not None and any(True for _ in projector.parameters()):  # "none" has nothing to shard
        units.append(fully_shard(projector, mesh=mesh, mp_policy=policy))
    for unit in units:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)


# ---------------------------------------------------------------------------- checkpoints
def training_state(run) -> dict:
    """The DCP state of a run: sharded model + projector and optimizer state, and the RNG."""
    model_state, optimizer_state = get_state_dict(run.container, run.optimizer)
    return {"model": model_state, "optimizer": optimizer_state, "rng": torch.get_rng_state()}


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(run):
    """CE (and the aux objective) on val batches 0..eval_batches-1, split over the ranks and all-reduced;
    geometry of the final hidden states and the target layer on the FIXED first micro-batch of val batch 0 (every
    rank runs that forward, as FSDP2 needs; rank 0 measures)."""
    cfg, rt = run.cfg, run.rt
    run.model.eval()
    sums = torch.zeros(4, device=rt.device, dtype=torch.float64)  # CE sum, tokens, aux sum, aux pairs
    for i, (first, count) in ((i, piece) for i in range(cfg.eval_batches) for piece in my_slices(run)):
        batch = run.val_sampler.get(i, first, count).to(rt.device)
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T)
        masks, pair_count = aux_pair_masks(cfg, [x], run.eot)
        terms = forward_terms(run.model, run.projector, cfg, x, y, masks[0])
        tokens = torch.tensor(float(y.numel()), dtype=torch.float64, device=rt.device)
        sums += torch.stack([terms.ce_sum.double(), tokens,
                             terms.aux_sum.double() if terms.aux_sum is not None else sums.new_zeros(()), pair_count])
    runtime.all_reduce(sums, rt)
    record = {"kind": "eval", "step": run.step, VAL_LOSS: (sums[0] / sums[1].clamp(min=1)).item()}
    if cfg.objective != "ntp":
        record[aux_loss_key(cfg.objective, "val")] = (sums[2] / sums[3].clamp(min=1)).item()
    # the geometry the paper plots (docs/method.md, "Geometry metrics"), on the same tokens every time; every
    # rank runs the forward (FSDP2 gathers the weights collectively), rank 0 measures
    x = run.val_sampler.get(0, 0, cfg.batch_size)[:, :-1].to(rt.device)  # (B, T) the first micro-batch
    out = run.model(x, layers=(cfg.target_layer,), compute_logits=False)
    if rt.master:
        hidden, target = out.final_hidden.flatten(0, 1), out.layers[cfg.target_layer].flatten(0, 1)  # (B*T, d) each
        record.update({EFFECTIVE_RANK: effective_rank(hidden),
                       AVG_COSINE: avg_pairwise_cosine(hidden, 4096, torch.Generator().manual_seed(0)),
                       TARGET_EFFECTIVE_RANK: effective_rank(target),
                       TARGET_AVG_COSINE: avg_pairwise_cosine(target, 4096, torch.Generator().manual_seed(0))})
    run.model.train()
    return record


# ---------------------------------------------------------------------------- logging
def write_jsonl(path, *records):
    """Append records to log.jsonl (a crash can tear only the last line, which read_log_until drops)."""
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def read_log_until(path, step):
    """The records of log.jsonl up to `step`: a resumed run drops what was logged after its checkpoint
    (a crash between two saves) and a torn last line, so every step appears once."""
    records = []
    for line in open(path).read().splitlines() if os.path.exists(path) else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in records if r.get("step", 0) <= step]


def format_duration(seconds):
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


# ---------------------------------------------------------------------------- training
@dataclass
class Run:
    """Everything one training run holds; built by build_run, advanced by train_step."""
    cfg: TrainConfig                        # resolved: target_layer, nitp_weight, batch_size filled in
    mcfg: model_lib.GPTConfig
    rt: runtime.Runtime
    model: model_lib.GPT                    # sharded by FSDP2 (its blocks compiled with --compile)
    projector: torch.nn.Module | None       # the aux head (NITP's projector, MTP, NextLat), sharded too
    container: torch.nn.ModuleDict          # {"gpt": model, "projector": projector}: one module for state dicts
    params: list                            # model and projector parameters, in the optimizer's order
    optimizer: torch.optim.Optimizer
    train_sampler: data.BatchSampler
    val_sampler: data.BatchSampler
    grad_accum: int                         # micro-batches per optimizer step on each process
    eot: int                                # the document separator, for --mask_doc_boundary
    meta: dict                              # the data directory's meta.json
    data_dir: str
    log_path: str
    step: int = 0                           # optimizer steps completed; with the seed, also the data position


@dataclass
class TrainResult:
    model: torch.nn.Module | None       # the trained GPT as a plain module (one process only; else None)
    projector: torch.nn.Module | None   # the aux head (nitp, mtp, nextlat runs; one process)
    out_dir: str
    step: int                           # optimizer steps completed
    history: list                       # the train and eval records this call wrote to log.jsonl
    stopped_by: int | None = None       # the signal that stopped the run before max_steps, if one did


def unsharded(sharded, plain, device):
    """`plain` (a new module of the same kind) loaded with the weights of an FSDP2 module of one process."""
    state = sharded.state_dict()
    plain.load_state_dict({k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()})
    return plain.to(device)


def check_memory(cfg, mcfg, rt):
    """Print the per-rank memory plan (rank 0); on CUDA, refuse a plan that clearly exceeds the device."""
    with torch.device("meta"):
        projector = build_projector(cfg, mcfg)
    plan = memory.plan_memory(mcfg, rt.world, cfg.batch_size, cfg.seq_len,
                              sum(p.numel() for p in projector.parameters()) if projector is not None else 0,
                              2 if rt.device.type == "cuda" else 4, cfg.activation_checkpointing, cfg.ce_chunk,
                              aux_logit_heads(cfg))
    device_bytes = memory.device_memory(rt.device)
    if rt.master:
        print(plan.table(device_bytes), flush=True)
    if plan.exceeds(device_bytes):
        raise ValueError(memory.advice(plan, device_bytes, rt.world, cfg.activation_checkpointing))
    return plan


def build_run(cfg, mcfg, rt) -> Run:
    """Data, model, projector, optimizer and (with --resume) their saved state."""
    if cfg.batch_size is None:  # the global batch in one micro-step per process: 8 x 256 alone, 4 x 256 on 2
        cfg = dataclasses.replace(cfg, batch_size=max(1, cfg.global_batch_tokens // (cfg.seq_len * rt.world)))
    if cfg.ce_chunk is None:  # chunks where full float32 logits dominate a GPU's memory; on CPU they cost time
        large_vocab = rt.device.type == "cuda" and mcfg.vocab_size > 65536
        cfg = dataclasses.replace(cfg, ce_chunk=memory.CE_CHUNK if large_vocab else 0)
    micro_tokens = cfg.batch_size * cfg.seq_len
    if cfg.global_batch_tokens % (micro_tokens * rt.world):
        raise ValueError(f"global_batch_tokens={cfg.global_batch_tokens} is not a multiple of batch_size * seq_len * "
                         f"world_size = {micro_tokens} * {rt.world}; change --global_batch_tokens or --batch_size")
    data_dir = cfg.data_dir or data.DEFAULT_DATA_DIR
    if rt.master:
        data.prepare_if_missing(data_dir)  # builds the default corpus once; any other dir must be prepared
    runtime.barrier(rt)
    meta = data.load_meta(data_dir)
    data.check_vocab(meta, mcfg.vocab_size)
    # a step's global batch is a function of (seed, step) alone; each process reads its micro-batches' slices
    samplers = [data.BatchSampler(data.load_split(data_dir, split), cfg.global_batch_tokens // cfg.seq_len,
                                  cfg.seq_len, cfg.seed) for split in ("train", "val")]
    plan = check_memory(cfg, mcfg, rt)
    if rt.master:  # room for one more checkpoint: the previous one stays until the new one is complete
        check_out_dir(cfg.out_dir, (plan.params + plan.optimizer) * rt.world)
        if not cfg.resume and checkpoint.latest(cfg.out_dir) is not None:
            raise ValueError(f"--out_dir={cfg.out_dir} already holds a run ({checkpoint.latest(cfg.out_dir)}); pass "
                             "--resume=true to continue it, or another --out_dir to start a new one")
    runtime.barrier(rt)
    torch.manual_seed(cfg.seed)
    model = model_lib.GPT(mcfg).to(rt.device)  # full weights first, then sharded: the same init for any world size
    projector = build_projector(cfg, mcfg)  # after the model: its init is the same for every objective
    projector = projector.to(rt.device) if projector is not None else None
    shard(model, projector, cfg, rt)
    container = torch.nn.ModuleDict({checkpoint.MODEL_KEY: model, **({"projector": projector} if projector else {})})
    params = list(model.parameters()) + (list(projector.parameters()) if projector is not None else [])
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **runtime.adamw_options(rt.device))
    run = Run(cfg=cfg, mcfg=mcfg, rt=rt, model=model, projector=projector, container=container, params=params,
              optimizer=optimizer, train_sampler=samplers[0], val_sampler=samplers[1],
              grad_accum=cfg.global_batch_tokens // (micro_tokens * rt.world), eot=meta.get("eot_token", data.EOT),
              meta=meta, data_dir=data_dir, log_path=os.path.join(cfg.out_dir, "log.jsonl"))
    if cfg.resume:
        ckpt_dir = checkpoint.latest(cfg.out_dir)
        if ckpt_dir is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint in {cfg.out_dir}/{checkpoint.CHECKPOINTS}; drop "
                                    "--resume to start a new run")
        saved = checkpoint.read_meta(ckpt_dir)
        notes = check_resumable(saved, cfg, mcfg, files.repo_relative(data_dir), meta)
        state = training_state(run)
        checkpoint.load(ckpt_dir, state)  # DCP reshards: the checkpoint may come from another world size
        set_state_dict(run.container, run.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])
        torch.set_rng_state(state["rng"])
        run.step = saved["step"]  # the samplers are pure functions of the step: this is the data position too
        if rt.master:
            kept = read_log_until(run.log_path, run.step)
            resumed = {"kind": "resume", "step": run.step, "checkpoint": files.repo_relative(ckpt_dir),
                       "world_size": rt.world, "notes": notes}
            files.write_text_atomically(run.log_path, "".join(json.dumps(r) + "\n" for r in kept + [resumed]))
            for note in notes:
                print(f"resume: {note}", flush=True)
    elif rt.master:  # a fresh run starts a fresh log
        files.write_text_atomically(run.log_path, json.dumps({
            "kind": "config", "train_config": dataclasses.asdict(cfg), "model_config": mcfg.to_dict(),
            "world_size": rt.world, "grad_accum": run.grad_accum, "device": str(rt.device),
            "num_params": model.num_params(), "num_params_active": model.num_params(active=True),
            "projector_params": sum(p.numel() for p in projector.parameters()) if projector else 0}) + "\n")
    return run


def save(run):
    checkpoint.save(run.cfg.out_dir, run.step, training_state(run), {
        "model_config": run.mcfg.to_dict(), "train_config": dataclasses.asdict(run.cfg),
        "tokenizer": run.meta.get("tokenizer", "gpt2"), "tokenizer_fingerprint": run.meta.get("tokenizer_fingerprint"),
        "data_dir": files.repo_relative(run.data_dir), "world_size": run.rt.world}, rank=run.rt.rank)


def my_slices(run):
    """[(first sequence, count)] of this process's micro-batches in a global batch: micro-batch m of rank r is
    slice m * world + r, so the processes and micro-steps together read the whole global batch once."""
    B, world = run.cfg.batch_size, run.rt.world
    return [((m * world + run.rt.rank) * B, B) for m in range(run.grad_accum)]


class NonFiniteLoss(RuntimeError):
    """A NaN or inf loss or gradient norm under --on_nonfinite=stop."""


def train_step(run):
    """One optimizer step over the global batch -> (lr, aux weight, [loss_ntp, loss_aux, loss_balance], grad norm,
    whether the update was applied). Each micro-batch term is divided by its GLOBAL count (all micro-batches, all
    ranks) and the gradients are summed, so the step is the same for any accumulation split and world size. A
    non-finite loss or gradient norm never reaches the weights: the run stops (--on_nonfinite=stop, raising
    NonFiniteLoss) or the update is dropped (skip)."""
    cfg, mcfg, rt = run.cfg, run.mcfg, run.rt
    lr = lr_at(run.step, cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    aux_trained = run.step >= cfg.nitp_start_step
    batches = [run.train_sampler.get(run.step, first, count).to(rt.device) for first, count in my_slices(run)]
    masks, pair_count = aux_pair_masks(cfg, [b[:, :-1] for b in batches], run.eot)
    runtime.all_reduce(pair_count, rt)
    pair_count = pair_count.float()
    parts = aux_part_names(cfg)  # stats: loss_ntp, loss_aux, loss_balance, the aux term's parts: global means
    stats = torch.zeros(3 + len(parts), device=rt.device)
    for batch, mask in zip(batches, masks):
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T)
        terms = forward_terms(run.model, run.projector, cfg, x, y, mask, aux_trained)
        loss_ntp = terms.ce_sum / cfg.global_batch_tokens  # every position has a target: the global count is known
        loss_balance = terms.balance.float() / (run.grad_accum * rt.world)  # a per-micro-batch mean already
        loss_aux = terms.aux_sum / pair_count if terms.aux_sum is not None else torch.zeros((), device=rt.device)
        loss = total_loss(loss_ntp, loss_aux if terms.aux_sum is not None and aux_trained else None, loss_balance,
                          aux_weight(cfg), balance_weight(mcfg))
        loss.backward()
        part_losses = (terms.aux_parts[name] / pair_count for name in parts)
        stats += torch.stack([loss_ntp, loss_aux, loss_balance, *part_losses]).detach().float()
    runtime.all_reduce(stats, rt)  # FSDP2 reduced the gradients during the backward passes
    grad_norm = clip_grad_norm(run.params, cfg.grad_clip, rt)
    finite = bool(torch.isfinite(grad_norm) and torch.isfinite(stats).all())  # the same on every rank
    if finite:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if not finite and cfg.on_nonfinite == "stop":
        loss_ntp, loss_aux = stats.tolist()[:2]
        raise NonFiniteLoss(f"step {run.step + 1}: non-finite loss or gradient (loss_ntp {loss_ntp}, aux {loss_aux}, "
                            f"grad norm {grad_norm.item()}); stopped before the optimizer step, so the newest "
                            f"checkpoint ({checkpoint.latest(cfg.out_dir) or 'none yet'}) holds the last good weights. "
                            "Lower --lr, check the data, or pass --on_nonfinite=skip to skip such steps")
    run.step += 1  # a skipped step still consumes its batch and its place in the schedule
    return lr, aux_weight(cfg) if aux_trained else 0.0, stats, grad_norm, finite


@contextlib.contextmanager
def graceful_stop():
    """SIGINT / SIGTERM set `stop.requested`: the loop saves at the end of the step and returns cleanly; a
    second signal aborts at once. Installed only from the main thread; the old handlers come back on exit."""
    stop = threading.Event()
    stop.signum = None

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        stop.signum = signum
        print(f"\nsignal {signum}: saving a checkpoint after this step, then stopping", flush=True)

    in_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def train(cfg: TrainConfig) -> TrainResult:
    """Train as configured (resolving the preset's defaults first) and return the final state."""
    cfg, mcfg = resolve_config(cfg)
    rt = runtime.start(cfg.device, cfg.cpu_malloc_tuning)
    run = None
    try:
        run = build_run(cfg, mcfg, rt)
        with graceful_stop() as stop:
            history = training_loop(run, stop)
        stopped_by = stop.signum if run.step < cfg.max_steps else None
        runtime.barrier(rt)
        plain = rt.world == 1  # alone, the shards are the whole tensors: hand back ordinary modules
        return TrainResult(unsharded(run.model, model_lib.GPT(mcfg), rt.device) if plain else None,
                           unsharded(run.projector, build_projector(cfg, mcfg), rt.device)
                           if plain and run.projector else None,
                           cfg.out_dir, run.step, history, stopped_by)
    finally:
        # the sharded tensors hold the process group (through their device mesh): free them while the process
        # group is still alive, so none of gloo's threads outlives it into interpreter shutdown (SIGABRT)
        del run
        gc.collect()
        runtime.stop(rt)


def training_loop(run, stop):
    cfg, mcfg, rt = run.cfg, run.mcfg, run.rt
    is_cuda = rt.device.type == "cuda"
    cost = flops.flops_per_token(mcfg, cfg.seq_len, **aux_flops_kwargs(cfg, mcfg))
    peak = cfg.peak_flops or flops.peak_bf16_flops(rt.device)  # None off CUDA and for unknown GPUs
    aux_key = aux_loss_key(cfg.objective) if cfg.objective != "ntp" else None
    history, ema, ema_n, train_time, window = [], 0.0, 0, 0.0, [0.0, 0]  # window: seconds, steps since last log
    while run.step < cfg.max_steps:
        t0 = time.perf_counter()
        lr, weight, stats, grad_norm, applied = train_step(run)
        if not applied and rt.master:
            write_jsonl(run.log_path, {"kind": "skipped", "step": run.step, "grad_norm": grad_norm.item()})
            print(f"step {run.step:>5}: non-finite loss or gradient, update skipped (--on_nonfinite=skip)", flush=True)
        if applied:
            ema = 0.9 * ema + 0.1 * total_loss(stats[0], stats[1], stats[2], weight, balance_weight(mcfg))
        stop_now = stop.is_set()
        if rt.world > 1:  # all ranks must agree to stop at the same step
            flag = torch.tensor([float(stop_now)], device=rt.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop_now = bool(flag.item())
        step, last = run.step, run.step == cfg.max_steps or stop_now
        if step % cfg.log_interval == 0 or last:
            loss_ntp, loss_aux, loss_balance, *parts = stats.tolist()  # syncs the device: the timing below is real
        dt = time.perf_counter() - t0  # the clock only runs during training steps (not eval, not saving)
        train_time, window, ema_n = train_time + dt, [window[0] + dt, window[1] + 1], ema_n + 1

        if step % cfg.log_interval == 0 or last:
            tokens_per_s = window[1] * cfg.global_batch_tokens / window[0]
            record = {"kind": "train", "step": step, "tokens": step * cfg.global_batch_tokens, "lr": lr,
                      "loss": total_loss(loss_ntp, loss_aux, loss_balance, weight, balance_weight(mcfg)),
                      "loss_ntp": loss_ntp, "grad_norm": grad_norm.item(), "tokens_per_s": tokens_per_s,
                      "elapsed_s": train_time}
            record.update({aux_key: loss_aux, **{f"{aux_key}_{k}": v for k, v in zip(aux_part_names(cfg), parts)}}
                          if aux_key else {})
            if mcfg.n_routed_experts:
                record["loss_balance"] = loss_balance
            if is_cuda:
                record["peak_mem_gib"] = torch.cuda.max_memory_allocated(rt.device) / 2**30
                if peak:  # per-device model FLOPs utilisation, FLOPs from flops.flops_per_token
                    record["mfu"] = tokens_per_s * (cost["ntp"] + cost["aux_extra"]) / rt.world / peak
            history.append(record)
            if rt.master:
                write_jsonl(run.log_path, record)
                aux_text = f" {cfg.objective} {loss_aux:.4f}" if aux_key else ""
                mfu_text = f" | mfu {record['mfu']:.1%}" if "mfu" in record else ""
                eta = (cfg.max_steps - step) * window[0] / window[1]
                print(f"step {step:>5}/{cfg.max_steps} | loss (ema) {ema.item() / (1 - 0.9 ** ema_n):.4f} | ntp "
                      f"{loss_ntp:.4f}{aux_text} | lr {lr:.2e} | {tokens_per_s:,.0f} tok/s{mfu_text} | "
                      f"eta {format_duration(eta)}", flush=True)
            window = [0.0, 0]
        if cfg.eval_batches > 0 and (last or (cfg.eval_interval > 0 and step % cfg.eval_interval == 0)):
            record = evaluate(run)
            history.append(record)
            if rt.master:
                write_jsonl(run.log_path, record)
                aux_text = (f" | val {cfg.objective} {record[aux_loss_key(cfg.objective, 'val')]:.4f}"
                            if aux_key else "")
                print(f"eval  {step:>5} | val loss {record[VAL_LOSS]:.4f}{aux_text} | eff. rank "
                      f"{record[EFFECTIVE_RANK]:.1f} (target layer {record[TARGET_EFFECTIVE_RANK]:.1f}) | "
                      f"avg cos {record[AVG_COSINE]:.3f}", flush=True)
        if last or (cfg.ckpt_interval > 0 and step % cfg.ckpt_interval == 0):
            save(run)
        if stop_now:
            break
    if rt.master:
        print(f"done: step {run.step}/{cfg.max_steps}, {format_duration(train_time)} of training, "
              f"checkpoint {checkpoint.latest(cfg.out_dir)}", flush=True)
    return history


def main(argv=None):
    """The command line. Exit codes: 0 the run reached max_steps; 2 bad input (a flag, a file, a config that
    does not fit, a corrupted checkpoint), one line naming it; 1 a failure while training (a non-finite loss,
    a full disk), one line; 128 + N when signal N stopped it before max_steps (after saving a checkpoint)."""
    try:
        result = train(parse_config(argv, __doc__))
    except (ValueError, FileNotFoundError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLoss as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full disk, a folder that went away: the cause, not a chained traceback
        where = f" ({err.filename})" if err.filename else ""
        print(f"train.py: error: {err.strerror or err}{where}; free space or fix the path, then rerun with "
              "--resume=true to continue from the last checkpoint", file=sys.stderr)
        return 1
    if result.stopped_by is not None:
        print(f"train.py: stopped by signal {result.stopped_by} at step {result.step}; the checkpoint is saved: rerun "
              "with --resume=true to continue", file=sys.stderr)
        return 128 + result.stopped_by
    return 0


if __name__ == "__main__":
    sys.exit(main())
