"""config.py: a training run's configuration: TrainConfig, read from flags and files, resolved, checked.

TrainConfig is ObjectiveConfig (every switch of the paper's ablation table, and the peers') plus the model,
data, optimisation, evaluation and runtime fields. Every field, and every model.GPTConfig field, is a
`--key=value` flag or a key of a `--config` file (TOML or JSON); flags win over the file, GPTConfig fields
apply on top of --preset. Everything that can be checked before training is checked here, so a bad value
fails in the first second with a line that names it and the fix, not after hours of training: the range
of every numeric field, the combination with the model, a writable output directory with room for a
checkpoint, and, on --resume, that the run being continued is the same run (`check_resumable`), on the same
vocabulary: a data directory prepared again, e.g. compacted from another corpus (data.py --compact_vocab), is refused.

train.py (and compare.py, to resolve a variant's flags) import it. Nothing runs at import.
"""

import dataclasses
import errno
import json
import math
import os
import shutil
import sys
import tomllib
import typing
from dataclasses import dataclass, field

import data
import model as model_lib
from nitp_loss import HEAD_KINDS, LOSS_TYPES
from support import checkpoint, files, memory, parallel, peers, runtime

# ---------------------------------------------------------------------------- the fields
OBJECTIVES, ATTACH = ("ntp", "nitp", "cosreg", "mtp", "nextlat"), ("post_norm", "pre_norm")


@dataclass
class ObjectiveConfig:
    objective: str = "nitp"                 # ntp | nitp | cosreg | mtp | nextlat
    nitp_weight: float | None = None        # lambda (also cosreg's weight); None: the preset's, else 1.0
    target_layer: int | None = None         # 0 = embedding, k = after block k, -1 = last; None: the preset's
    shift: int = 1                          # h_t predicts z_{t+shift}; 0 = the current-step ablation
    loss_type: str = "cosine"               # cosine | mse | smooth_l1 | kl
    stop_grad: bool = True                  # no gradient into the target
    nitp_start_step: int = 0                # delayed start: before it the term is logged, not trained
    projector: str = "swiglu"               # swiglu | linear | none
    projector_hidden: int | None = None     # swiglu width; None: 4 * d_model
    attach: str = "post_norm"               # h = final hidden after the final norm | pre_norm: after the last block
    mask_doc_boundary: bool = False         # drop pairs that cross an <|endoftext|> (nitp_loss.document_pair_mask)
    ce_chunk: int | None = None             # cross-entropy over chunks of this many positions, logits recomputed in
                                            # the backward (model.cross_entropy_sum); 0: full logits; None: chunks
                                            # on CUDA for vocabularies over 65,536, full logits otherwise
    # the peers (peers.py; docs/method.md, "Peers: MTP and NextLat"); nitp_start_step delays their term too
    mtp_depth: int = 1                      # D sequential MTP modules (DeepSeek-V3: 1)
    mtp_weight: float = 0.3                 # MTP's lambda (DeepSeek-V3: 0.3, then 0.1 for the last 4.8T tokens)
    nextlat_weight: float = 1.0             # NextLat's lambda on the smooth-L1 next-latent regression
    nextlat_kl_weight: float = 1.0          # NextLat's lambda on the KL of the next-token distributions


@dataclass
class TrainConfig(ObjectiveConfig):
    """The objective's switches (ObjectiveConfig: objective, nitp_weight, target_layer, shift, loss_type,
    stop_grad, nitp_start_step, projector, projector_hidden, attach, mask_doc_boundary, ce_chunk, and the peers'
    mtp_depth, mtp_weight, nextlat_weight, nextlat_kl_weight) plus these."""
    # model and data
    preset: str = "small"                   # a name in model.PRESETS
    data_dir: str | None = None             # None: data.DEFAULT_DATA_DIR, prepared on first use
    out_dir: str = "runs/default"
    # optimisation (paper: AdamW (0.9, 0.95), weight decay 0.1, clip 1.0, WSD with the last 20% decaying)
    max_steps: int = 250                    # the main job's budget: ~7 min per run on 2 CPU cores (README)
    batch_size: int | None = None           # sequences per micro-batch per process; None: no accumulation
    seq_len: int = 256
    global_batch_tokens: int = 2048         # tokens per optimizer step over all processes -> grad accumulation
    lr: float = 1.5e-3
    min_lr_frac: float = 0.0
    warmup_steps: int = 15
    decay_frac: float = 0.2
    schedule: str = "wsd"                   # wsd | cosine
    weight_decay: float = 0.1               # matrices only (dim >= 2), projector included
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0                  # 0: no clipping (the norm is still logged)
    seed: int = 1337
    on_nonfinite: str = "stop"              # a NaN/inf loss or gradient norm: stop (keep the last checkpoint) | skip
    # evaluation, logging, checkpoints
    eval_interval: int = 50                 # 0: only the final eval (eval_batches=0: none)
    eval_batches: int = 8
    log_interval: int = 10
    ckpt_interval: int = 50                 # 0: only the final save
    resume: bool = False                    # continue from the newest checkpoint in OUT_DIR/checkpoints
    # runtime
    device: str = "auto"                    # auto | cpu | cuda | cuda:N (under torchrun: cuda = cuda:LOCAL_RANK)
    compile: bool = False                   # torch.compile: the whole model alone, each block under DDP / FSDP2
    data_parallel: str = "auto"             # auto | ddp | fsdp over several processes (support/parallel.py)
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
    cpu_malloc_tuning: bool = True          # glibc mallopt on CPU (runtime.tune_cpu_malloc)
    fused_kernels: bool = True              # support/fused.py's eager float32 kernels; false: model.py's plain formulas
    wandb: bool = False                     # every log.jsonl record to Weights & Biases too (support/tracking.py)
    wandb_project: str = "nitp"
    wandb_run_name: str | None = None       # None: the out_dir's name
    peak_flops: float | None = None         # per device, for MFU; None: looked up from the GPU's name
    model_overrides: dict = field(default_factory=dict)  # GPTConfig fields from the CLI / the file


SCHEDULES, NONFINITE_POLICIES = ("wsd", "cosine"), ("stop", "skip")
# what a resumed run may change: where and how it runs, how often it logs, evaluates and saves; anything
# else changes the trajectory (max_steps may grow: continuing a run is common; see check_resumable)
RESUME_MAY_CHANGE = ("out_dir", "resume", "max_steps", "batch_size", "ce_chunk", "eval_interval", "eval_batches",
                     "log_interval", "ckpt_interval", "device", "compile", "data_parallel", "activation_checkpointing",
                     "cpu_malloc_tuning", "fused_kernels", "peak_flops", "on_nonfinite", "wandb", "wandb_project",
                     "wandb_run_name")


# ---------------------------------------------------------------------------- reading
def read_config_file(path) -> dict:
    """The key = value pairs of a TOML or JSON file; ValueError naming the file and what is wrong."""
    if not path.endswith((".toml", ".json")):
        raise ValueError(f"--config={path}: give a .toml or .json file (other formats, YAML included, are not read)")
    try:
        with open(path, "rb") as f:
            loaded = tomllib.load(f) if path.endswith(".toml") else json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"--config={path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"--config={path} is a folder; give a .toml or .json file") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as err:
        kind = "TOML" if path.endswith(".toml") else "JSON"
        raise ValueError(f"--config={path} is not valid {kind}: {err}; fix the file") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"--config={path} must hold a table / object of key = value pairs")
    return loaded


def parse_config(argv=None, doc=None) -> TrainConfig:
    """TrainConfig from `--key=value` flags and an optional `--config=FILE`; the flags override the file.
    A name in both TrainConfig and GPTConfig (nitp_weight) sets the TrainConfig field."""
    argv = sys.argv[1:] if argv is None else list(argv)
    train_hints = typing.get_type_hints(TrainConfig)
    model_hints = typing.get_type_hints(model_lib.GPTConfig)
    if runtime.wants_help(argv):
        print(doc or __doc__, "TrainConfig flags (default):",
              *runtime.flag_help(TrainConfig, skip=("model_overrides",)),
              "GPTConfig flags: --" + ", --".join(model_hints), sep="\n")
        raise SystemExit(0)
    settings, overrides = {}, {}

    def put(key, value, from_cli):
        if key == "model_overrides" and isinstance(value, dict):  # a saved train_config fed back as a file
            for k, v in value.items():
                put(k, v, from_cli)
        elif key in train_hints and key != "model_overrides":
            settings[key] = runtime.coerce_value(key, value, train_hints[key], from_cli)
        elif key in model_hints:
            overrides[key] = runtime.coerce_value(key, value, model_hints[key], from_cli)
        else:
            raise ValueError(f"unknown config key {key!r}: not a TrainConfig or GPTConfig field (see --help)")

    flags = runtime.split_flags(argv)
    for key, path, _ in flags:
        if key == "config":
            for k, v in read_config_file(path).items():
                put(k, v, from_cli=False)
    for key, value, _ in flags:
        if key != "config":
            put(key, value, from_cli=True)
    return TrainConfig(**settings, model_overrides=overrides)


# ---------------------------------------------------------------------------- checking
def resolve_objective(cfg, mcfg):
    """cfg (an ObjectiveConfig or a subclass) with target_layer and nitp_weight resolved for the model mcfg
    (model.GPTConfig.nitp_defaults: the flag, else the preset's, else the rule of thumb); ValueError naming a
    bad value and its fix."""
    target, weight = mcfg.nitp_defaults(cfg.target_layer, cfg.nitp_weight)
    cfg = dataclasses.replace(cfg, target_layer=target, nitp_weight=weight)
    for ok, message in [
        (cfg.objective in OBJECTIVES, f"objective={cfg.objective!r}; use one of {OBJECTIVES}"),
        (0 <= target <= mcfg.n_layer, f"target_layer={target} is outside [0, n_layer={mcfg.n_layer}] (0 = embedding "
                                      "output, k = after block k, -1 = after the last); pass --target_layer=K "
                                      "in that range"),
        (cfg.loss_type in LOSS_TYPES, f"loss_type={cfg.loss_type!r}; use one of {LOSS_TYPES}"),
        (cfg.projector in HEAD_KINDS, f"projector={cfg.projector!r}; use one of {HEAD_KINDS}"),
        (cfg.attach in ATTACH, f"attach={cfg.attach!r}; use one of {ATTACH}"),
        (cfg.mtp_depth >= 1, f"mtp_depth={cfg.mtp_depth} must be >= 1 (DeepSeek-V3 uses 1)"),
        (min(cfg.mtp_weight, cfg.nextlat_weight, cfg.nextlat_kl_weight) >= 0,
         "mtp_weight, nextlat_weight and nextlat_kl_weight must be >= 0: a negative weight rewards the opposite"),
    ]:
        if not ok:
            raise ValueError(message)
    return cfg


def resolve_config(cfg: TrainConfig):
    """(cfg with target_layer and nitp_weight filled in, the GPTConfig); ValueError naming a bad value."""
    overrides = dict(cfg.model_overrides)
    preset = model_lib.get_preset(cfg.preset)
    if "n_layer" in overrides and "nitp_target_layer" not in overrides and preset.nitp_target_layer is not None \
            and overrides["n_layer"] != preset.n_layer:
        overrides["nitp_target_layer"] = None  # the preset's target layer was chosen for the preset's depth
        if cfg.target_layer is None and int(os.environ.get("RANK", 0)) == 0:
            print(f"note: --n_layer={overrides['n_layer']} changes {cfg.preset}'s depth ({preset.n_layer}), so NITP's "
                  f"target layer comes from the 20% rule instead of the preset's {preset.nitp_target_layer}; "
                  "pass --target_layer=K to choose", file=sys.stderr)
    mcfg = dataclasses.replace(preset, **overrides)
    finite = all(math.isfinite(v) for v in (cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.beta1, cfg.beta2,
                                            cfg.min_lr_frac, cfg.decay_frac, cfg.mtp_weight, cfg.nextlat_weight,
                                            cfg.nextlat_kl_weight) + ((cfg.nitp_weight,) if cfg.nitp_weight
                                                                      is not None else ()))
    if not finite:
        raise ValueError("lr, weight_decay, grad_clip, beta1, beta2, min_lr_frac, decay_frac and the aux weights "
                         "(nitp_weight, mtp_weight, nextlat_weight, nextlat_kl_weight) must be finite numbers (no nan "
                         "or inf)")
    cfg = resolve_objective(cfg, mcfg)
    for ok, message in [
        (cfg.nitp_weight >= 0, f"nitp_weight={cfg.nitp_weight} is negative: it would reward the objective's "
                               "opposite; use a value >= 0 (the paper uses 0.6-1.0)"),
        (cfg.schedule in SCHEDULES, f"schedule={cfg.schedule!r}; use one of {SCHEDULES}"),
        (cfg.on_nonfinite in NONFINITE_POLICIES, f"on_nonfinite={cfg.on_nonfinite!r}; use one of {NONFINITE_POLICIES}"),
        (cfg.data_parallel in parallel.MODES, f"data_parallel={cfg.data_parallel!r}; use one of {parallel.MODES}"),
        (cfg.seq_len <= mcfg.block_size, f"seq_len={cfg.seq_len} exceeds the model's block_size={mcfg.block_size}; "
                                         "lower --seq_len or raise --block_size"),
        (min(cfg.max_steps, cfg.seq_len, cfg.global_batch_tokens, cfg.log_interval) > 0
         and (cfg.batch_size is None or cfg.batch_size > 0),
         "max_steps, batch_size, seq_len, global_batch_tokens and log_interval must be positive"),
        (min(cfg.warmup_steps, cfg.eval_interval, cfg.eval_batches, cfg.ckpt_interval, cfg.nitp_start_step,
             cfg.seed) >= 0, "warmup_steps, eval_interval, eval_batches, ckpt_interval, nitp_start_step and seed "
                             "must be >= 0"),
        (cfg.lr > 0, f"lr={cfg.lr} must be > 0"),
        (cfg.weight_decay >= 0 and cfg.grad_clip >= 0, "weight_decay and grad_clip must be >= 0 (grad_clip=0: no "
                                                       "clipping)"),
        (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1, f"beta1={cfg.beta1} and beta2={cfg.beta2} must be in [0, 1)"),
        (cfg.projector_hidden is None or cfg.projector_hidden > 0, "projector_hidden must be positive (or none)"),
        (cfg.ce_chunk is None or cfg.ce_chunk >= 0, "ce_chunk must be >= 0 (0: full logits) or none (automatic)"),
        (0 <= cfg.shift < cfg.seq_len, f"shift={cfg.shift} must be in [0, seq_len={cfg.seq_len})"),
        (cfg.mtp_depth < cfg.seq_len, f"mtp_depth={cfg.mtp_depth} must be below seq_len={cfg.seq_len}: depth k "
                                      "predicts token t+k+1 of the window"),
        (0 <= cfg.decay_frac <= 1 and 0 <= cfg.min_lr_frac <= 1, "decay_frac and min_lr_frac must be in [0, 1]"),
    ]:
        if not ok:
            raise ValueError(message)
    return cfg, mcfg


def batch_layout(cfg, mcfg, rt):
    """cfg with the micro-batch size and the loss head's chunking filled in; the global batch must split evenly."""
    if cfg.batch_size is None:  # the global batch in one micro-step per process: 8 x 256 alone, 4 x 256 on 2
        cfg = dataclasses.replace(cfg, batch_size=max(1, cfg.global_batch_tokens // (cfg.seq_len * rt.world)))
    if cfg.ce_chunk is None:  # chunks where full float32 logits dominate a GPU's memory; on CPU they cost time
        large_vocab = rt.device.type == "cuda" and mcfg.vocab_size > 65536
        cfg = dataclasses.replace(cfg, ce_chunk=memory.CE_CHUNK if large_vocab else 0)
    micro_tokens = cfg.batch_size * cfg.seq_len
    if cfg.global_batch_tokens % (micro_tokens * rt.world):
        raise ValueError(f"global_batch_tokens={cfg.global_batch_tokens} is not a multiple of batch_size * seq_len "
                         f"* world_size = {micro_tokens} * {rt.world}; change --global_batch_tokens or --batch_size")
    return cfg


def check_memory(cfg, mcfg, rt, projector_params: int):
    """(the per-rank memory plan, the data-parallel mode): support/parallel.choose picks the mode from the plan of
    the replicated state (world size 1: what DDP holds on every rank); rank 0 prints the mode, why, and the plan
    of that mode. On CUDA, a plan that clearly exceeds the device is refused."""
    logit_heads = peers.logit_heads(cfg) if cfg.objective in peers.PEERS else 0
    plans = {world: memory.plan_memory(mcfg, world, cfg.batch_size, cfg.seq_len, projector_params,
                                       2 if rt.device.type == "cuda" else 4, cfg.activation_checkpointing,
                                       cfg.ce_chunk, logit_heads) for world in {1, rt.world}}
    device_bytes = memory.device_memory(rt.device)
    mode, why = parallel.choose(cfg.data_parallel, rt.world, not plans[1].exceeds(device_bytes))
    plan = plans[rt.world] if mode == "fsdp" else plans[1]
    if rt.master:
        print(f"data parallel: {mode} ({why})\n{plan.table(device_bytes)}", flush=True)
    if plan.exceeds(device_bytes):
        if mode == "ddp":
            raise ValueError(f"--data_parallel=ddp: the replicated state needs {plan.total / memory.GIB:.2f} GiB per "
                             f"rank, more than the device has; pass --data_parallel=fsdp (or auto) to shard it")
        raise ValueError(memory.advice(plan, device_bytes, rt.world, cfg.activation_checkpointing))
    return plan, mode


def lock_out_dir(cfg, rt):
    """This run alone in out_dir, before anything is printed or written: global rank 0 takes the folder's lock
    (runtime.lock_folder) and holds it while the returned handle stays open; None on the other ranks. A --resume
    into a folder that holds no run is refused first, so that it leaves no folder holding only the lock."""
    if not rt.master:
        return None
    runtime.check_lock_free(cfg.out_dir)  # a folder in use is named as such, whatever else is wrong with the call
    if cfg.resume and not os.path.lexists(os.path.join(cfg.out_dir, checkpoint.CHECKPOINTS)) \
            and not os.path.isfile(cfg.out_dir):  # a file: check_out_dir names it
        raise FileNotFoundError(f"--resume=true but {cfg.out_dir} holds no run to continue (no "
                                f"{checkpoint.CHECKPOINTS} folder); drop --resume to start a new run there, or pass "
                                "the --out_dir of the run to continue")
    check_out_dir(cfg.out_dir, needed_bytes=0)  # a writable folder (the room for a checkpoint: check_fresh_out_dir)
    try:
        return runtime.lock_folder(cfg.out_dir)
    except OSError as err:
        raise ValueError(f"--out_dir={cfg.out_dir} is not writable ({err.strerror}); pick another folder") from None


def check_fresh_out_dir(cfg, plan, mode, rt):
    """Room for one more checkpoint (the previous one stays until the new one is complete), and no other run's
    checkpoints unless --resume continues them. `plan` is per rank: FSDP2's a 1 / world share of the state."""
    if rt.master:
        check_out_dir(cfg.out_dir, (plan.params + plan.optimizer) * (rt.world if mode == "fsdp" else 1))
        if broken := checkpoint.incomplete_checkpoints(cfg.out_dir):
            raise checkpoint.damaged(broken[-1])
        if not cfg.resume and checkpoint.latest(cfg.out_dir) is not None:
            raise ValueError(f"--out_dir={cfg.out_dir} already holds a run ({checkpoint.latest(cfg.out_dir)}); "
                             "pass --resume=true to continue it, or another --out_dir to start a new one")
        log = os.path.join(cfg.out_dir, "log.jsonl")
        if not cfg.resume and os.path.exists(log):  # an earlier run that never saved: keep its log aside
            kept = next(f"{log}.{i}" for i in range(1, 10**6) if not os.path.exists(f"{log}.{i}"))
            os.replace(log, kept)
            print(f"note: {log} of an earlier run kept as {kept}", flush=True)
    runtime.barrier(rt)


def check_out_dir(out_dir, needed_bytes: int) -> None:
    """Before training: out_dir is (or can become) a writable folder with room for one more checkpoint."""
    if not str(out_dir).strip():
        raise ValueError("--out_dir is empty; give the run's folder, e.g. --out_dir=runs/mine")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out_dir={out_dir} is a file, not a folder; pass a folder path")
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise ValueError(f"--out_dir={out_dir}: no space left on its disk; free some space (a step_N.tmp folder "
                             f"under {out_dir}/{checkpoint.CHECKPOINTS} is an unfinished save and may go), then "
                             "rerun") from None
        raise ValueError(f"--out_dir={out_dir} is not writable ({err.strerror}); pick another folder") from None
    for name in ("checkpoints", "log.jsonl"):
        path = os.path.join(out_dir, name)
        if name == "checkpoints" and os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{path} is a file where train.py keeps its checkpoint folders; move it away")
        if name == "log.jsonl" and os.path.isdir(path):
            raise ValueError(f"{path} is a folder where train.py writes its log; move it away")
    free = shutil.disk_usage(out_dir).free
    if free < needed_bytes:
        raise ValueError(f"--out_dir={out_dir} has {free / 2**20:,.0f} MiB free, a checkpoint needs about "
                         f"{needed_bytes / 2**20:,.0f} MiB; free some space or use another --out_dir")


def check_resumable(meta, cfg, mcfg, data_dir: str, data_meta: dict | None = None) -> list[str]:
    """ValueError naming every field where the checkpoint's run differs from this one in a way that changes the
    trajectory (model, objective, data, optimisation, seed); returns notes for what may change (a longer run).
    data_dir: this run's data directory in the form checkpoints store (relative to the repository); data_meta: its
    meta.json (default: read from data_dir), which must hold the checkpoint's vocabulary and tokens
    (data.prepared_again)."""
    ours, theirs, model_ours = dataclasses.asdict(cfg), meta["train_config"], mcfg.to_dict()
    # a field added after the checkpoint was written had its default then
    theirs = {**{f.name: f.default for f in dataclasses.fields(cfg) if f.name not in theirs
                 and f.default is not dataclasses.MISSING}, **theirs}
    diffs = [f"model field {k}: checkpoint {v!r}, this run {model_ours.get(k)!r}"
             for k, v in meta["model_config"].items() if model_ours.get(k) != v]
    diffs += [f"{k}: checkpoint {theirs.get(k)!r}, this run {ours[k]!r}" for k in ours
              if k not in RESUME_MAY_CHANGE + ("model_overrides", "data_dir") and theirs.get(k) != ours[k]]
    data_meta = data_meta or data.load_meta(files.from_repo(data_dir))
    if meta.get("data_dir") != data_dir and not data.same_folder(files.from_repo(meta.get("data_dir") or ""),
                                                                files.from_repo(data_dir)):
        diffs.append(f"data_dir: checkpoint {meta.get('data_dir')!r}, this run {data_dir!r}")
    elif problem := data.prepared_again(meta, files.from_repo(data_dir), data_meta):
        diffs.append(f"data_dir: {problem} (prepare it as it was, from the same text)")
    if diffs:
        raise ValueError("cannot resume, the checkpoint was trained with a different configuration: " + "; ".join(diffs)
                         + ". Pass the checkpoint's values, or drop --resume / use a new --out_dir")
    notes = []
    old_max = theirs.get("max_steps", cfg.max_steps)
    if cfg.max_steps != old_max:
        if cfg.max_steps < meta["step"]:
            raise ValueError(f"--max_steps={cfg.max_steps} is below the checkpoint's step {meta['step']}; pass a "
                             f"larger --max_steps (the run was planned for {old_max})")
        notes.append(f"max_steps {old_max} -> {cfg.max_steps}")
        decay_start = old_max - round(cfg.decay_frac * old_max) if cfg.schedule == "wsd" else cfg.warmup_steps
        if cfg.max_steps < old_max:  # allowed (end a run early), but the schedule changes from here on
            new_start = cfg.max_steps - round(cfg.decay_frac * cfg.max_steps)
            where = (f"its decay starts at step {new_start} instead of {decay_start}" if cfg.schedule == "wsd"
                     else "its cosine decay is compressed")
            notes.append(f"warning: a shorter run than planned: the learning rate follows the schedule of "
                         f"{cfg.max_steps} steps from step {meta['step']} on ({where}), so the run differs from "
                         f"the planned {old_max}-step one")
        elif meta["step"] > decay_start:
            notes.append(f"warning: the checkpoint (step {meta['step']}) is past the old schedule's decay start (step "
                         f"{decay_start}): the learning rate jumps back up from here")
    return notes
