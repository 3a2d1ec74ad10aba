"""train.py: pre-train a GPT with next-token prediction plus NITP, top to bottom in the order things happen.

    python train.py                                   # small NITP model on the Shakespeare corpus, CPU, minutes
    python train.py --objective=ntp --max_steps=20 --device=cpu --out_dir=runs/ntp
    torchrun --standalone --nproc_per_node=2 train.py   # DDP or FSDP2 over 2 processes: gloo on CPU, nccl on CUDA

Every config.TrainConfig and model.GPTConfig field is a `--key=value` flag or a key of a `--config` TOML/JSON
file; config.py checks them all before training. `main` -> `train` (configuration, data, model and projector,
data parallelism, optimizer, resume) -> `training_loop` -> `train_step`, where `loss = loss_ntp + nitp_weight *
loss_nitp` is one line; the regulariser and the peers (MTP, NextLat) enter through one marked branch into
support/peers.py. Each micro-batch's terms are divided by the step's GLOBAL counts (tokens, pairs) and the
gradients summed, so a step is the same for any accumulation split and world size. Writes OUT_DIR/log.jsonl
and OUT_DIR/checkpoints/step_N/ (DCP). Nothing imports train.py; nothing runs at import.
"""

import dataclasses
import gc
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch

import config
import data
import model as model_lib
from config import TrainConfig
from nitp_loss import NITPHead, nitp_loss_terms, nitp_pair_mask
from support import checkpoint, files, flops, fused, metrics, parallel, peers, runtime, tracking


# ---------------------------------------------------------------------------- the command line
def main(argv=None):
    """Exit codes: 0 done; 2 bad input (a flag, a file, a corrupted checkpoint), one line naming it; 1 a failure
    while training (a non-finite loss, a full disk), one line; 128 + N: signal N stopped it (checkpoint saved)."""
    try:
        result = train(config.parse_config(argv, __doc__))
    except (ValueError, FileNotFoundError, NonFiniteLoss) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, NonFiniteLoss) else 2
    except (MemoryError, torch.OutOfMemoryError):
        print("train.py: error: out of memory (the memory plan above shows a rank's share); lower --batch_size "
              "(accumulation keeps the global batch) or pass --activation_checkpointing=true", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the loop's own handler is installed (setup), or after it (shutdown)
        print("train.py: interrupted before training started or after it ended; no checkpoint is half-written",
              file=sys.stderr)
        return 130
    except OSError as err:  # a full disk, a folder that went away: the cause, not a chained traceback
        where = f" ({err.filename})" if err.filename else ""
        print(f"train.py: error: {err.strerror or err}{where}; free space or fix the path, then rerun with "
              "--resume=true to continue from the last checkpoint", file=sys.stderr)
        return 1
    if result.stopped_by is not None:
        print(f"train.py: stopped by signal {result.stopped_by} at step {result.step}; the checkpoint is saved: "
              "rerun with --resume=true to continue", file=sys.stderr)
        return 128 + result.stopped_by
    return 0


@dataclass
class Run:
    """Everything one training run holds; built by `train`, advanced by train_step."""
    cfg: TrainConfig                        # resolved: target_layer, nitp_weight, batch_size filled in
    mcfg: model_lib.GPTConfig
    rt: runtime.Runtime
    model: model_lib.GPT                    # wrapped in place for `parallel` (support/parallel.py)
    projector: torch.nn.Module | None       # the aux head (NITP's projector, MTP, NextLat), wrapped too
    container: torch.nn.ModuleDict          # {"gpt": model, "projector": projector}: one module for state dicts
    params: list                            # model and projector parameters, in the optimizer's order
    optimizer: torch.optim.Optimizer
    train_sampler: data.BatchSampler
    val_sampler: data.BatchSampler
    grad_accum: int                         # micro-batches per optimizer step on each process
    eot: int                                # the document separator, for --mask_doc_boundary
    meta: dict                              # the data directory's meta.json
    data_dir: str
    log: tracking.RunLog                    # log.jsonl (and its wandb twin with --wandb=true)
    parallel: str                           # "none" (one process), "ddp" or "fsdp"
    halted: torch.Tensor                    # 0-dim bool on the device: a non-finite step under --on_nonfinite=stop
    step: int = 0                           # optimizer steps completed; with the seed, also the data position


@dataclass
class TrainResult:
    model: torch.nn.Module | None       # the trained GPT as a plain module (one process only; else None)
    projector: torch.nn.Module | None   # the aux head (nitp, mtp, nextlat runs; one process)
    out_dir: str
    step: int                           # optimizer steps completed
    history: list                       # the train and eval records this call wrote to log.jsonl
    stopped_by: int | None = None       # the signal that stopped the run before max_steps, if one did


def train(cfg: TrainConfig) -> TrainResult:
    """Train as configured and return the final state: the whole run, in order."""
    cfg, mcfg = config.resolve_config(cfg)  # the preset's target layer and lambda filled in, every field checked
    rt = runtime.start(cfg.device, cfg.cpu_malloc_tuning)
    fused_before = fused.set_enabled(cfg.fused_kernels)  # model.py's speed switch: its plain formulas when off
    run = lock = None
    created = rt.master and not os.path.lexists(cfg.out_dir)  # removed again if the run is refused before it starts
    try:
        lock = config.lock_out_dir(cfg, rt)  # this run alone in out_dir until it ends
        cfg = config.batch_layout(cfg, mcfg, rt)  # the micro-batch per process, the loss head's chunking
        data_dir, meta, samplers = prepare_data(cfg, mcfg, rt)
        with torch.device("meta"):  # the head's size for the memory plan: no memory, no init
            head = build_projector(cfg, mcfg)
        plan, mode = config.check_memory(cfg, mcfg, rt, sum(p.numel() for p in head.parameters()) if head else 0)
        config.check_fresh_out_dir(cfg, plan, mode, rt)
        torch.manual_seed(cfg.seed)
        model = model_lib.GPT(mcfg).to(rt.device)  # full weights first, then sharded: the same init for any world
        projector = build_projector(cfg, mcfg)  # after the model: the model's init is the same for every objective
        projector = projector.to(rt.device) if projector is not None else None
        parallel.apply(model, projector, mode, rt, cfg.activation_checkpointing, cfg.compile)  # none | DDP | FSDP2
        params = list(model.parameters()) + (list(projector.parameters()) if projector is not None else [])
        optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2],
                                        "weight_decay": cfg.weight_decay},
                                       {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                      lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **runtime.adamw_options(rt.device))
        container = torch.nn.ModuleDict({checkpoint.MODEL_KEY: model, **({"projector": projector} if projector
                                                                          else {})})
        run = Run(cfg=cfg, mcfg=mcfg, rt=rt, model=model, projector=projector, container=container, params=params,
                  optimizer=optimizer, train_sampler=samplers[0], val_sampler=samplers[1],
                  grad_accum=cfg.global_batch_tokens // (cfg.batch_size * cfg.seq_len * rt.world),
                  eot=meta.get("eot_token", data.EOT), meta=meta, data_dir=data_dir,
                  log=tracking.RunLog(os.path.join(cfg.out_dir, "log.jsonl"), cfg if rt.master else None),
                  parallel=mode, halted=torch.zeros((), dtype=torch.bool, device=rt.device))
        resume_or_start_log(run)
        with runtime.graceful_stop() as stop:
            history = training_loop(run, stop)
        stopped_by = stop.signum if run.step < cfg.max_steps else None
        runtime.barrier(rt)
        plain = rt.world == 1  # alone, the shards are the whole tensors: hand back ordinary modules
        return TrainResult(runtime.unsharded(run.model, model_lib.GPT(mcfg), rt.device) if plain else None,
                           runtime.unsharded(run.projector, build_projector(cfg, mcfg), rt.device)
                           if plain and run.projector else None,
                           cfg.out_dir, run.step, history, stopped_by)
    finally:
        # the sharded tensors hold the process group (through their device mesh): free them while the process
        # group is still alive, so none of gloo's threads outlives it into interpreter shutdown (SIGABRT)
        for handle in filter(None, (run.log if run else None, lock)):  # the wandb run; the folder's lock
            handle.close()
        if created and run is None:  # refused (bad input) before anything but the lock was written
            runtime.remove_lock_folder(cfg.out_dir)
        del run
        gc.collect()
        runtime.stop(rt)
        fused.set_enabled(fused_before)


# ---------------------------------------------------------------------------- data
def prepare_data(cfg, mcfg, rt):
    """(data dir, its meta.json, [train, val] samplers): a step's global batch is a function of (seed, step)."""
    data_dir = cfg.data_dir or data.DEFAULT_DATA_DIR
    if rt.master:
        data.prepare_if_missing(data_dir)  # builds the default corpus once; any other dir must be prepared
    runtime.barrier(rt)
    meta = data.load_meta(data_dir)
    data.check_vocab(meta, mcfg.vocab_size)
    samplers = [data.BatchSampler(data.load_split(data_dir, split), cfg.global_batch_tokens // cfg.seq_len,
                                  cfg.seq_len, cfg.seed) for split in ("train", "val")]
    return data_dir, meta, samplers


def my_slices(run):
    """[(first sequence, count)] of this process's micro-batches: micro-batch m of rank r is slice m * world + r."""
    B, world = run.cfg.batch_size, run.rt.world
    return [((m * world + run.rt.rank) * B, B) for m in range(run.grad_accum)]


# ---------------------------------------------------------------------------- model and projector
def build_projector(cfg, mcfg):
    """The objective's training-only head, or None (ntp, cosreg): NITP's projector P, or a peer's head."""
    if cfg.objective == "nitp":
        return NITPHead(mcfg.d_model, cfg.projector_hidden, cfg.projector, init_std=mcfg.init_std)
    return peers.build_head(cfg, mcfg) if cfg.objective in peers.PEERS else None


# ---------------------------------------------------------------------------- checkpoints and the log's start
def resume_or_start_log(run):
    """With --resume: the newest checkpoint's weights, optimizer, RNG and step (DCP reshards: it may come from
    another world size), and log.jsonl cut back to that step. Without: a fresh log with the config line."""
    cfg, rt = run.cfg, run.rt
    if not cfg.resume:
        if rt.master:
            projector_params = sum(p.numel() for p in run.projector.parameters()) if run.projector else 0
            files.write_text_atomically(run.log.path, json.dumps({
                "kind": "config", "train_config": dataclasses.asdict(cfg), "model_config": run.mcfg.to_dict(),
                "world_size": rt.world, "grad_accum": run.grad_accum, "device": str(rt.device),
                "num_params": run.model.num_params(), "num_params_active": run.model.num_params(active=True),
                "projector_params": projector_params}) + "\n")
        return
    ckpt_dir = checkpoint.latest(cfg.out_dir)
    if ckpt_dir is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint in {cfg.out_dir}/{checkpoint.CHECKPOINTS}; "
                                "drop --resume to start a new run")
    saved = checkpoint.read_meta(ckpt_dir)
    notes = config.check_resumable(saved, cfg, run.mcfg, files.repo_relative(run.data_dir), run.meta)
    checkpoint.restore(ckpt_dir, run.container, run.optimizer)  # weights, AdamW state and RNG, resharded
    run.step = saved["step"]  # the samplers are pure functions of the step: this is the data position too
    if rt.master:
        kept = files.read_log_until(run.log.path, run.step)
        resumed = {"kind": "resume", "step": run.step, "checkpoint": files.repo_relative(ckpt_dir),
                   "world_size": rt.world, "notes": notes}
        files.write_text_atomically(run.log.path, "".join(json.dumps(r) + "\n" for r in kept + [resumed]))
        for note in notes:
            print(f"resume: {note}", flush=True)


def save(run):
    checkpoint.save(run.cfg.out_dir, run.step, checkpoint.training_state(run.container, run.optimizer), {
        "model_config": run.mcfg.to_dict(), "train_config": dataclasses.asdict(run.cfg),
        "tokenizer": run.meta.get("tokenizer", "gpt2"), "tokenizer_fingerprint": run.meta.get("tokenizer_fingerprint"),
        "data_dir": files.repo_relative(run.data_dir), "data_fingerprint": data.fingerprint(run.data_dir, run.meta),
        "world_size": run.rt.world}, rank=run.rt.rank)


# ---------------------------------------------------------------------------- the loop
def training_loop(run, stop):
    """Steps until max_steps or a signal: each step, maybe log, maybe evaluate, maybe save."""
    cfg, mcfg, rt = run.cfg, run.mcfg, run.rt
    cost = flops.flops_per_token(mcfg, cfg.seq_len, **flops.aux_flops_kwargs(cfg, mcfg))
    peak = cfg.peak_flops or flops.peak_bf16_flops(rt.device)  # None off CUDA and for unknown GPUs
    history, ema_n, train_time, window = [], 0, 0.0, [0.0, 0]  # window: seconds, steps since last log
    ema, unread = torch.zeros((), device=rt.device), []  # unread: the steps whose finite flags are not read yet
    while run.step < cfg.max_steps:
        t0 = time.perf_counter()
        step_stats = train_step(run)
        unread.append((run.step, step_stats))
        ema = torch.where(step_stats.finite, 0.9 * ema + 0.1 * step_stats.losses["loss"], ema)
        stop_now = runtime.any_rank(stop.is_set(), rt)  # all ranks stop at the same step (agreed on the host)
        step, last = run.step, run.step == cfg.max_steps or stop_now
        logging = step % cfg.log_interval == 0 or last
        evaluating = cfg.eval_batches > 0 and (last or (cfg.eval_interval > 0 and step % cfg.eval_interval == 0))
        saving = last or (cfg.ckpt_interval > 0 and step % cfg.ckpt_interval == 0)
        if logging or evaluating or saving:  # the only reads of the device between two log lines
            settle(run, unread)
            unread = []
        if logging:
            losses = step_stats.read()  # syncs the device: the timing below is real
        dt = time.perf_counter() - t0  # the clock only runs during training steps (not eval, not saving)
        train_time, window, ema_n = train_time + dt, [window[0] + dt, window[1] + 1], ema_n + 1
        if logging:
            record = train_record(run, step_stats, losses, window, train_time, cost, peak)
            history.append(record)
            if rt.master:
                run.log.write(record)
                print_line(run, record, float(ema) / (1 - 0.9 ** ema_n), window)
            window = [0.0, 0]
        if evaluating:
            record = evaluate(run)
            history.append(record)
            if rt.master:
                run.log.write(record)
                print_line(run, record)
        if saving:
            save(run)
        if stop_now:
            break
    if rt.master:
        print(f"done: step {run.step}/{cfg.max_steps}, {files.format_duration(train_time)} of training, "
              f"checkpoint {checkpoint.latest(cfg.out_dir)}", flush=True)
    return history


def settle(run, unread):
    """The finite flags of the steps since the last read, in one read of the device: a "skipped" record per
    non-finite step (--on_nonfinite=skip), or NonFiniteLoss at the first one (stop: its update, and every one
    after it, was skipped on the device, so the weights are the last good ones and nothing was saved since)."""
    for (step, stats), finite in zip(unread, torch.stack([s.finite for _, s in unread]).tolist()):
        if finite:
            continue
        if run.cfg.on_nonfinite == "stop":
            aux_key = metrics.aux_loss_key(run.cfg.objective) if run.cfg.objective != "ntp" else None
            aux_text = f", {aux_key} {stats.losses[aux_key].item()}" if aux_key else ""
            raise NonFiniteLoss(f"step {step}: non-finite loss or gradient (loss_ntp {stats.losses['loss_ntp'].item()}"
                                f"{aux_text}, grad norm {stats.grad_norm.item()}); stopped before the optimizer step, "
                                f"so the newest checkpoint ({checkpoint.latest(run.cfg.out_dir) or 'none yet'}) holds "
                                "the last good weights. Lower --lr, check the data, or pass --on_nonfinite=skip to "
                                "skip such steps")
        if run.rt.master:
            run.log.write({"kind": "skipped", "step": step, "grad_norm": stats.grad_norm.item()})
            print(f"step {step:>5}: non-finite loss or gradient, update skipped (--on_nonfinite=skip)", flush=True)


# ---------------------------------------------------------------------------- one step
@dataclass
class StepStats:
    """What one optimizer step reports, named. `losses` stay on the device ({"loss", "loss_ntp", "loss_nitp"
    (or the peer's key and its parts), "loss_balance"}: global means over the step's batch) until `read`."""
    lr: float
    aux_weight: float                   # the weight the aux term carried (0 before nitp_start_step)
    losses: dict
    grad_norm: torch.Tensor             # 0-dim, before clipping
    finite: torch.Tensor                # 0-dim bool: False, a non-finite step whose update was skipped

    def read(self) -> dict:
        """The losses as floats: one read of the device."""
        return dict(zip(self.losses, torch.stack(list(self.losses.values())).tolist()))


class NonFiniteLoss(RuntimeError):
    """A NaN or inf loss or gradient norm under --on_nonfinite=stop."""


def train_step(run) -> StepStats:
    """One optimizer step over the global batch, each micro-batch's terms divided by their GLOBAL counts, with no
    read of the device. A non-finite loss or gradient norm never reaches the weights: the update is skipped on the
    device, and `settle` reports it (NonFiniteLoss under --on_nonfinite=stop, a "skipped" record under skip)."""
    cfg, mcfg, rt = run.cfg, run.mcfg, run.rt
    lr = lr_at(run.step, cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    aux_trained = run.step >= cfg.nitp_start_step  # before it, the aux term is computed and logged, not trained
    weight = aux_weight(cfg) if aux_trained else 0.0
    batches = [runtime.to_device(run.train_sampler.get(run.step, first, count), rt.device)
               for first, count in my_slices(run)]
    masks, pair_count = aux_pair_masks(cfg, [b[:, :-1] for b in batches], run.eot)
    runtime.all_reduce(pair_count, rt)
    pair_count = pair_count.float()
    aux_key = metrics.aux_loss_key(cfg.objective) if cfg.objective != "ntp" else None
    parts = peers.part_names(cfg) if cfg.objective in peers.PEERS else ()
    keys = ["loss", "loss_ntp", "loss_balance"] + ([aux_key] if aux_key else []) + [f"{aux_key}_{p}" for p in parts]
    losses = {key: torch.zeros((), device=rt.device) for key in keys}
    for i, (batch, mask) in enumerate(zip(batches, masks)):
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T) inputs and next-token targets
        parallel.sync_gradients((run.model, run.projector), run.parallel, i == len(batches) - 1)  # DDP: last only
        with parallel.autocast(run.parallel, rt.device):
            terms = forward_terms(run.model, run.projector, cfg, x, y, mask, aux_trained)
        loss_ntp = terms.ce_sum / cfg.global_batch_tokens  # every position has a target: the global count is known
        loss_balance = terms.balance.float() / (run.grad_accum * rt.world)  # a per-micro-batch mean already
        loss = loss_ntp
        if mcfg.n_routed_experts and mcfg.balance_coef:
            loss = loss + mcfg.balance_coef * loss_balance
        if cfg.objective == "nitp":
            loss_nitp = terms.aux_sum / pair_count  # mean over the step's counted (h_t, z_{t+shift}) pairs
            if aux_trained:
                loss = loss + cfg.nitp_weight * loss_nitp  # the paper's L = L_NTP + lambda * L_NITP
            losses[aux_key] += loss_nitp.detach()
        elif cfg.objective in peers.PEERS:  # ---- the regulariser and the peers: support/peers.py
            loss_aux = terms.aux_sum / pair_count
            if aux_trained:
                loss = loss + weight * loss_aux
            losses[aux_key] += loss_aux.detach()
            for part in parts:
                losses[f"{aux_key}_{part}"] += (terms.aux_parts[part] / pair_count).detach()
        loss.backward()
        losses["loss"] += loss.detach()
        losses["loss_ntp"] += loss_ntp.detach()
        losses["loss_balance"] += loss_balance.detach()
    flat = torch.stack(list(losses.values()))
    runtime.all_reduce(flat, rt)  # DDP / FSDP2 reduced the gradients during the backward passes
    losses = dict(zip(losses, flat.unbind()))
    grad_norm = runtime.clip_grad_norm(run.params, cfg.grad_clip, rt)
    finite = torch.isfinite(grad_norm) & torch.isfinite(flat).all()  # (0-dim bool) the same on every rank
    if cfg.on_nonfinite == "stop":
        run.halted = run.halted | ~finite  # from the first non-finite step on, no update until settle stops the run
    run.optimizer.found_inf = (~finite | run.halted).float()  # the fused AdamW skips the update (GradScaler's way)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1  # a skipped step still consumes its batch and its place in the schedule
    return StepStats(lr, weight, losses, grad_norm, finite)


def aux_weight(cfg) -> float:
    """The weight of the aux term: lambda (nitp_weight) for NITP, the peer's own otherwise, 0 for ntp."""
    if cfg.objective == "nitp":
        return cfg.nitp_weight
    return peers.weight(cfg) if cfg.objective in peers.PEERS else 0.0


def aux_pair_masks(cfg, inputs, separator):
    """(a mask or None per input [(B, T)], total count as 0-dim float64), known before any forward pass: NITP's
    pairs at cfg.shift (none across a separator with --mask_doc_boundary), peers.pair_masks, or none (ntp)."""
    if cfg.objective == "nitp":
        masks = [nitp_pair_mask(x, cfg.shift, separator if cfg.mask_doc_boundary else None) for x in inputs]
        return masks, sum(m.sum() for m in masks).double()
    if cfg.objective in peers.PEERS:
        return peers.pair_masks(cfg, inputs, separator)
    return [None] * len(inputs), torch.zeros((), dtype=torch.float64, device=inputs[0].device)


@dataclass
class Terms:
    ce_sum: torch.Tensor                # 0-dim: summed next-token cross-entropy over the batch's positions
    aux_sum: torch.Tensor | None        # 0-dim: summed aux loss over the counted pairs (None for ntp)
    balance: torch.Tensor               # 0-dim: MoE balance loss of this micro-batch (0 for a dense model)
    aux_parts: dict | None = None       # nextlat: {"h": smooth-L1 sum, "kl": KL sum}, unweighted, same count


def forward_terms(model, projector, cfg, x, y, pair_mask=None, aux_trained=True) -> Terms:
    """One forward pass on x (B, T) with targets y (B, T) -> the summed terms. h is the final hidden state
    (attach=post_norm) or the residual after the last block (pre_norm); NITP's target is layers[target_layer] of
    the same pass. aux_trained=False (before nitp_start_step): the aux term without gradient, logged only."""
    n_layer = len(model.blocks) if hasattr(model, "blocks") else model.config.n_layer
    taps = {cfg.target_layer} | ({n_layer} if cfg.attach == "pre_norm" else set())
    taps |= peers.taps(cfg, n_layer) if cfg.objective in peers.PEERS else set()
    chunk = cfg.ce_chunk or 0
    logits = cfg.objective == "nextlat" and chunk == 0  # its KL reuses the next position's logits
    out = model(x, layers=tuple(sorted(taps)), compute_logits=logits, targets=y, ce_chunk=chunk)
    h = out.final_hidden if cfg.attach == "post_norm" else out.layers[n_layer]  # (B, T, d)
    aux_sum, balance, parts = None, out.balance_loss, None
    with torch.set_grad_enabled(torch.is_grad_enabled() and aux_trained):
        if cfg.objective == "nitp":  # P(h_t) against the implicit token z_{t+shift}, z = layers[k] of this pass
            aux_sum, _ = nitp_loss_terms(projector(h), out.layers[cfg.target_layer], shift=cfg.shift,
                                         loss_type=cfg.loss_type, stop_grad=cfg.stop_grad, pair_valid=pair_mask)
        elif cfg.objective in peers.PEERS:  # ---- the regulariser and the peers: support/peers.py
            aux_sum, balance, parts = peers.aux_terms(model, projector, cfg, out, h, y, pair_mask)
    return Terms(out.ce_sum, aux_sum, balance, parts)


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


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(run):
    """CE and the aux loss on val batches 0..eval_batches-1 over all ranks; the geometry of the last hidden state
    and of the target layer on the FIXED first sequences of val batch 0, the same at any world size."""
    cfg, rt = run.cfg, run.rt
    run.model.eval()
    sums = torch.zeros(4, device=rt.device, dtype=torch.float64)  # CE sum, tokens, aux sum, aux pairs
    for i, (first, count) in ((i, piece) for i in range(cfg.eval_batches) for piece in my_slices(run)):
        batch = runtime.to_device(run.val_sampler.get(i, first, count), rt.device)
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T)
        masks, pair_count = aux_pair_masks(cfg, [x], run.eot)
        with parallel.autocast(run.parallel, rt.device):
            terms = forward_terms(run.model, run.projector, cfg, x, y, masks[0])
        tokens = torch.tensor(float(y.numel()), dtype=torch.float64, device=rt.device)
        aux_sum = terms.aux_sum.double() if terms.aux_sum is not None else sums.new_zeros(())
        sums += torch.stack([terms.ce_sum.double(), tokens, aux_sum, pair_count])
    runtime.all_reduce(sums, rt)
    record = {"kind": "eval", "step": run.step, metrics.VAL_LOSS: (sums[0] / sums[1].clamp(min=1)).item()}
    if cfg.objective != "ntp":
        record[metrics.aux_loss_key(cfg.objective, "val")] = (sums[2] / sums[3].clamp(min=1)).item()
    # the geometry the paper plots (docs/method.md, "Geometry metrics") on the same tokens at any world size: every
    # rank runs the forward on all of them, a micro-batch at a time (FSDP2 gathers the weights collectively)
    states, count = [], max(1, min(cfg.global_batch_tokens, metrics.GEOMETRY_TOKENS) // cfg.seq_len)
    for first in range(0, count, cfg.batch_size):
        x = runtime.to_device(run.val_sampler.get(0, first, min(cfg.batch_size, count - first))[:, :-1], rt.device)
        with parallel.autocast(run.parallel, rt.device):
            out = run.model(x, layers=(cfg.target_layer,), compute_logits=False)
        if rt.master:  # rank 0 measures
            states.append((out.final_hidden.flatten(0, 1), out.layers[cfg.target_layer].flatten(0, 1)))  # (B*T, d)
    if rt.master:
        record.update(metrics.training_geometry(*(torch.cat(parts) for parts in zip(*states))))
    run.model.train()
    return record


# ---------------------------------------------------------------------------- the log
def train_record(run, step_stats, losses, window, train_time, cost, peak) -> dict:
    """The train line of log.jsonl for this step: the step's losses (global means), lr, grad norm, speed."""
    cfg, mcfg, rt = run.cfg, run.mcfg, run.rt
    aux_key = metrics.aux_loss_key(cfg.objective) if cfg.objective != "ntp" else None
    tokens_per_s = window[1] * cfg.global_batch_tokens / window[0]
    # the step's formula over the logged means (in float64, as the log has always held it)
    total = losses["loss_ntp"]
    if mcfg.n_routed_experts and mcfg.balance_coef:
        total = total + mcfg.balance_coef * losses["loss_balance"]
    if aux_key:
        total = total + step_stats.aux_weight * losses[aux_key]
    record = {"kind": "train", "step": run.step, "tokens": run.step * cfg.global_batch_tokens, "lr": step_stats.lr,
              "loss": total, "loss_ntp": losses["loss_ntp"], "grad_norm": step_stats.grad_norm.item(),
              "tokens_per_s": tokens_per_s, "elapsed_s": train_time}
    record.update({k: v for k, v in losses.items() if aux_key and k.startswith(aux_key)})
    if mcfg.n_routed_experts:
        record["loss_balance"] = losses["loss_balance"]
    if rt.device.type == "cuda":
        record["peak_mem_gib"] = torch.cuda.max_memory_allocated(rt.device) / 2**30
        if peak:  # per-device model FLOPs utilisation, FLOPs from flops.flops_per_token
            record["mfu"] = tokens_per_s * (cost["ntp"] + cost["aux_extra"]) / rt.world / peak
    return record


def print_line(run, record, ema=None, window=None):
    """The progress line of a train record (with the smoothed loss and the ETA) or of an eval record."""
    cfg, step = run.cfg, record["step"]
    split = "train" if record["kind"] == "train" else "val"
    aux_key = metrics.aux_loss_key(cfg.objective, split) if cfg.objective != "ntp" else None
    if split == "val":
        aux = f" | val {cfg.objective} {record[aux_key]:.4f}" if aux_key else ""
        print(f"eval  {step:>5} | val loss {record[metrics.VAL_LOSS]:.4f}{aux} | eff. rank "
              f"{record[metrics.EFFECTIVE_RANK]:.1f} (target layer {record[metrics.TARGET_EFFECTIVE_RANK]:.1f}) | "
              f"avg cos {record[metrics.AVG_COSINE]:.3f}", flush=True)
        return
    aux = f" {cfg.objective} {record[aux_key]:.4f}" if aux_key else ""
    mfu = f" | mfu {record['mfu']:.1%}" if "mfu" in record else ""
    eta = files.format_duration((cfg.max_steps - step) * window[0] / window[1])
    print(f"step {step:>5}/{cfg.max_steps} | loss (ema) {ema:.4f} | ntp {record['loss_ntp']:.4f}{aux} | lr "
          f"{record['lr']:.2e} | {record['tokens_per_s']:,.0f} tok/s{mfu} | eta {eta}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
