"""bench.py: what NITP and its peers cost on this machine, measured against their FLOPs floors (docs/method.md).

    python bench.py                                       # "small" preset on CPU (fp32), about a minute: a table
    python bench.py --json                                # the same, as one JSON object on stdout
    python bench.py --preset=gpt2-124m --compile          # on a GPU: bf16 autocast, MFU against the bf16 peak
    python bench.py --preset=gpt2-124m --moe_preset=9bA1b # ... and the paper's MoE block against dense

NITP's extra work is the projector and the cosine, so its overhead has a floor that the FLOPs accounting
gives (flops.flops_per_token); a good implementation sits on it. On the device and preset given, in ONE run:
  * the training step (forward, backward, clipping, AdamW) for NTP, NITP and NITP's peers MTP and NextLat
    (peers.py), interleaved after a warm-up (NTP NITP MTP NextLat, then the reverse: the order flips every round
    so drift hits all alike): median step times, each objective's overhead (median over rounds of its step / the
    NTP step - 1) and its FLOPs overhead. Machines are shared and noisy: the ratios are the result; absolute
    times mean something only on a GPU;
  * NITP's two pieces (projector, loss) alone, forward + backward: where the overhead goes;
  * tokens/s, peak memory (CUDA: per objective; CPU: the process's max RSS), MFU on CUDA;
  * an MoE block (the preset's, or small-moe's for a dense preset) against a dense SwiGLU of the same active
    FLOPs (hidden width (top_k + n_shared) * d_expert), forward + backward, tokens/s;
  * the FLOPs overhead in the spec's paper mode, for the preset and for 9bA1b (the paper says ~2.3%).
Every BenchConfig field is a `--field=value` flag. The step is built here from the pieces train.py uses
(model.GPT, nitp_loss.nitp_loss_terms, peers.aux_terms, torch.optim.AdamW); flags, device and CPU settings come
from runtime.py. Nothing runs at import.
"""

import contextlib
import dataclasses
import json
import multiprocessing
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as tools/NAME.py: the core is one level up
import model as model_lib
from config import ObjectiveConfig, resolve_objective
from nitp_loss import NITPHead, nitp_loss, nitp_loss_terms, nitp_pair_mask
from support import flops, peers, runtime

OBJECTIVES = ("ntp", "nitp", "mtp", "nextlat")  # the training steps timed against each other


# ---------------------------------------------------------------------------- configuration
@dataclass
class BenchConfig:
    preset: str = "small"               # a name in model.PRESETS
    device: str = "auto"                # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    dtype: str = "auto"                 # auto (bfloat16 autocast on cuda, float32 on cpu) | float32 | bfloat16
    batch_size: int | None = None       # None: 16 on cuda, 2 on cpu
    seq_len: int | None = None          # None: min(block_size, 1024 on cuda, 256 on cpu)
    warmup: int = 2                     # untimed rounds first (allocator, caches, torch.compile)
    rounds: int = 30                    # timed rounds, each one step per objective (one MoE and one dense pass)
    compile: bool = False               # torch.compile the loss (model + CE + projector + NITP loss) and the layers
    threads: int = 1                    # CPU threads; 0: torch's default (one per core). See cpu_threads()
    target_layer: int | None = None     # None: the preset's nitp_target_layer, else round(0.2 * n_layer)
    projector_hidden: int | None = None  # None: 4 * d_model (the paper's head)
    moe_preset: str | None = None       # whose MoE block to time; None: the preset's, or small-moe's if dense
    layer_tokens: int | None = None     # tokens through the MoE and dense layers; None: 16384 on cuda, 2048 on cpu
    peak_flops: float | None = None     # device bf16 peak for MFU; None: flops.peak_bf16_flops (known GPUs)
    ce_chunk: int | None = None         # the chunked loss head's chunk vs the plain head; None: a quarter of the batch
    json: bool = False                  # one JSON object on stdout instead of the table


def parse_config(argv=None) -> BenchConfig:
    """BenchConfig from `--field=value` flags (a bare `--flag` means true); an unknown field is an error."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if runtime.wants_help(argv):
        print(__doc__, *runtime.flag_help(BenchConfig), sep="\n")
        raise SystemExit(0)
    return runtime.parse_flags(argv, BenchConfig, "bench.py")


def resolve(cfg: BenchConfig):
    """(cfg with every None / auto filled in, the preset's GPTConfig); ValueError naming a bad value."""
    mcfg = model_lib.get_preset(cfg.preset)
    device = str(runtime.resolve_device(cfg.device))
    cuda = device.startswith("cuda")
    defaults = dict(dtype="bfloat16" if cuda else "float32", batch_size=16 if cuda else 2,
                    seq_len=min(mcfg.block_size, 1024 if cuda else 256), projector_hidden=4 * mcfg.d_model,
                    target_layer=mcfg.nitp_defaults()[0],
                    moe_preset=cfg.preset if mcfg.n_routed_experts else "small-moe",
                    layer_tokens=16384 if cuda else 2048)
    cfg = dataclasses.replace(cfg, device=device, **{key: value for key, value in defaults.items()
                                                    if getattr(cfg, key) in (None, "auto")})
    if cfg.ce_chunk is None:
        cfg = dataclasses.replace(cfg, ce_chunk=max(1, cfg.batch_size * cfg.seq_len // 4))
    for ok, message in [
        (cfg.dtype in ("float32", "bfloat16"), f"dtype={cfg.dtype!r}; use auto, float32 or bfloat16"),
        (min(cfg.batch_size, cfg.seq_len, cfg.rounds, cfg.projector_hidden, cfg.layer_tokens) > 0
         and min(cfg.warmup, cfg.threads) >= 0, "batch_size, seq_len, rounds, projector_hidden and layer_tokens "
                                                "must be positive, warmup and threads >= 0"),
        (cfg.seq_len <= mcfg.block_size, f"seq_len={cfg.seq_len} exceeds block_size={mcfg.block_size}; lower it"),
        (0 <= cfg.target_layer <= mcfg.n_layer, f"target_layer={cfg.target_layer} is outside [0, {mcfg.n_layer}]"),
        (model_lib.get_preset(cfg.moe_preset).n_routed_experts > 0,
         f"moe_preset={cfg.moe_preset!r} has no MoE block; name an MoE preset such as small-moe"),
        # measured: a tiny-moe NITP step took 1.1 s compiled vs 55 ms eager, recompiling on new expert counts
        (not (cfg.compile and mcfg.n_routed_experts) or (cuda and cfg.dtype == "bfloat16"),
         "--compile with an MoE preset needs CUDA and bfloat16 (the grouped-matmul path): the expert loop splits "
         "tokens by data-dependent counts and torch.compile recompiles at every step; drop --compile"),
    ]:
        if not ok:
            raise ValueError(message)
    return cfg, mcfg


# ---------------------------------------------------------------------------- measuring
@contextlib.contextmanager
def cpu_threads(n):
    """torch's intra-op threads set to n (0: left alone) inside the block. One by default: on a machine shared
    with other jobs, two OpenMP threads next to one busy process made steps 40x slower (they spin at every
    barrier: a tiny-moe step took 3.5 s instead of 85 ms), which no interleaving cancels."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_interleaved(runs: dict, rounds: int, warmup: int, device, label: str):
    """({name: [seconds per call]}, {name: peak CUDA bytes}) over `rounds` timed rounds after `warmup` untimed
    ones; every round calls each run once, in reversed order every other round. The clock: wall time on CUDA
    (synchronised); on CPU the CPU time of this process (all its threads), which other jobs on a shared
    machine inflate far less than wall time (that went from 1.6 s to 2.3 s a step within minutes here)."""
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    times, peaks, began = {name: [] for name in runs}, dict.fromkeys(runs, 0), time.perf_counter()
    for r in range(warmup + rounds):
        for name in list(runs)[::1 if r % 2 == 0 else -1]:
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = clock()
            runs[name]()
            if cuda:
                torch.cuda.synchronize(device)
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
            if r >= warmup:
                times[name].append(clock() - start)
        if sys.stderr.isatty() or r + 1 == warmup + rounds:  # one line that updates, or one line when done
            print(f"\rbench: {label}: round {r + 1}/{warmup + rounds} ({warmup} warm-up), "
                  f"{time.perf_counter() - began:.0f} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr, flush=True)
    return times, peaks


def training_steps(cfg, mcfg, device, autocast, ce_chunk=0, names=OBJECTIVES):
    """{name: step} for the objectives `names`: one optimizer step each on a fixed random batch, with one shared
    model, each objective's own head (NITP's projector, MTP's modules, NextLat's
    dynamics model) and one AdamW over all of them (a step leaves the other heads' grads None, so AdamW and
    clipping skip them). Each objective keeps its defaults (MTP depth 1, weight 0.3; NextLat weights 1, 1).
    ce_chunk: the loss head's chunk (0: full logits)."""
    torch.manual_seed(0)
    model = model_lib.GPT(mcfg).to(device)
    objectives = {name: resolve_objective(ObjectiveConfig(objective=name, target_layer=cfg.target_layer,
                                                          projector_hidden=cfg.projector_hidden, ce_chunk=ce_chunk),
                                          mcfg)
                  for name in names}
    heads = {name: NITPHead(mcfg.d_model, o.projector_hidden, init_std=mcfg.init_std) if name == "nitp"
             else peers.build_head(o, mcfg) if name in peers.PEERS else None for name, o in objectives.items()}
    heads = {name: head.to(device) if head is not None else None for name, head in heads.items()}
    params = [*model.parameters(), *(p for head in heads.values() if head is not None for p in head.parameters())]
    # fused on CPU too: one kernel for all tensors, 17 ms instead of 158 ms a step for "small" (measured here)
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    batch = torch.randint(0, mcfg.vocab_size, (cfg.batch_size, cfg.seq_len + 1), device=device)
    x, y = batch[:, :-1], batch[:, 1:]  # (B, T)
    nitp_mask = nitp_pair_mask(x, 1)  # (B, T - 1): every pair counts on one random window
    masks = {name: peers.pair_masks(o, [x]) for name, o in objectives.items() if name in peers.PEERS}

    def compute_loss(x, y, name: str):  # the training step's loss, as train.py's train_step builds it
        o, head = objectives[name], heads[name]
        taps = {o.target_layer} | (peers.taps(o, mcfg.n_layer) if name in peers.PEERS else set())
        out = model(x, layers=tuple(sorted(taps)), compute_logits=name == "nextlat" and not ce_chunk, targets=y,
                    ce_chunk=ce_chunk)
        loss, balance = out.ce_sum / y.numel(), out.balance_loss
        if name == "nitp":
            nitp_sum, pairs = nitp_loss_terms(head(out.final_hidden), out.layers[o.target_layer], pair_valid=nitp_mask)
            loss = loss + o.nitp_weight * nitp_sum / pairs
        elif name in peers.PEERS:
            (mask,), pairs = masks[name]
            aux_sum, balance, _ = peers.aux_terms(model, head, o, out, out.final_hidden, y, mask)
            loss = loss + peers.weight(o) * aux_sum / pairs.float()
        return loss + mcfg.balance_coef * balance.float() if mcfg.n_routed_experts else loss

    loss_fn = torch.compile(compute_loss) if cfg.compile else compute_loss  # one graph per objective

    def step(name):
        with autocast:
            loss = loss_fn(x, y, name)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {name: (lambda name=name: step(name)) for name in names}


def nitp_parts(cfg, mcfg, device, autocast):
    """{"projector": pass, "nitp_loss": pass}: forward + backward of NITP's two extra pieces alone, on random
    (batch, seq_len, d) states, to show where the overhead goes (together they should be the whole of it)."""
    torch.manual_seed(0)
    projector = NITPHead(mcfg.d_model, cfg.projector_hidden, init_std=mcfg.init_std).to(device)
    hidden = torch.randn(cfg.batch_size, cfg.seq_len, mcfg.d_model, device=device, requires_grad=True)  # (B, T, d)
    target = torch.randn_like(hidden)  # (B, T, d), no grad: the loss's stop-gradient target

    def projector_pass():
        with autocast:
            out = projector(hidden)
        out.float().sum().backward()
        projector.zero_grad(set_to_none=True)
        hidden.grad = None

    def loss_pass():
        with autocast:
            loss = nitp_loss(hidden, target)
        loss.backward()
        hidden.grad = None

    return {"projector": projector_pass, "nitp_loss": loss_pass}


def loss_head_steps(cfg, mcfg, device, autocast):
    """{"plain": step, "chunked": step}: NTP training steps with the full-logits head and with the chunked one
    (cfg.ce_chunk positions at a time, logits recomputed in the backward pass), same model and batch."""
    return {name: training_steps(cfg, mcfg, device, autocast, chunk, names=("ntp",))["ntp"]
            for name, chunk in (("plain", 0), ("chunked", cfg.ce_chunk))}


def _peak_rss_of_steps(cfg, mcfg, ce_chunk, queue):
    """In a fresh process: two NTP steps with this loss head, then the process's peak RSS (bytes) -> queue."""
    runtime.setup_device(torch.device("cpu"), cpu_malloc_tuning=False)  # freed memory goes back: RSS tracks use
    step = training_steps(cfg, mcfg, torch.device("cpu"), contextlib.nullcontext(), ce_chunk, names=("ntp",))["ntp"]
    step(), step()
    queue.put(_peak_rss())


def _peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM on Linux (ru_maxrss would carry the parent's peak across exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_peak_memory(cfg, mcfg) -> dict:
    """{"plain": bytes, "chunked": bytes}: peak RSS of a fresh process running two steps with each head (CPU has no
    allocator statistics; a process of its own keeps the other measurements out)."""
    context, peaks = multiprocessing.get_context("spawn"), {}
    for name, chunk in (("plain", 0), ("chunked", cfg.ce_chunk)):
        queue = context.Queue()
        child = context.Process(target=_peak_rss_of_steps, args=(cfg, mcfg, chunk, queue))
        child.start()
        peaks[name] = queue.get(timeout=600)
        child.join()
    return peaks


def moe_and_dense_layers(cfg, device, autocast):
    """({"moe": pass, "dense": pass}, description, MoE dispatch path): forward + backward of the MoE block of
    cfg.moe_preset and of a SwiGLU with its active expert FLOPs (the router's d x E is the MoE's only extra),
    weights N(0, init_std^2), on layer_tokens random tokens. Tokens per expert set the MoE's matmul sizes:
    on CPU, small-moe ran at 0.56x / 0.69x / 0.79x the dense throughput at 512 / 1024 / 2048 tokens."""
    moe_cfg = model_lib.get_preset(cfg.moe_preset)
    active = moe_cfg.top_k + moe_cfg.n_shared_experts
    torch.manual_seed(0)
    layers = {"moe": model_lib.MoE(moe_cfg), "dense": model_lib.SwiGLU(moe_cfg.d_model, active * moe_cfg.d_expert)}
    x = torch.randn(cfg.layer_tokens, moe_cfg.d_model, device=device, requires_grad=True)  # (N, d)
    grad_out = torch.randn_like(x)
    with autocast:
        grouped = layers["moe"].to(device).grouped_mm_ok(x)
    compile = cfg.compile and grouped  # the loop path recompiles on every new split (see resolve): both eager
    runs = {}
    for name, layer in layers.items():
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_(0.0, moe_cfg.init_std)
        fn = torch.compile(layer.to(device)) if compile else layer.to(device)

        def forward_backward(layer=layer, fn=fn):
            with autocast:
                out = fn(x)  # MoE: (out, balance loss, load)
            (out[0] if isinstance(out, tuple) else out).backward(grad_out)
            layer.zero_grad(set_to_none=True)
            x.grad = None

        runs[name] = forward_backward
    path = ("grouped_mm" if grouped else "loop") + (", compiled" if compile else ", eager")
    about = (f"{cfg.moe_preset}: {moe_cfg.n_routed_experts} experts top-{moe_cfg.top_k} + "
             f"{moe_cfg.n_shared_experts} shared, d {moe_cfg.d_model}, d_expert {moe_cfg.d_expert}; "
             f"dense hidden {active * moe_cfg.d_expert}")
    return runs, about, path


# ---------------------------------------------------------------------------- the benchmark
def overhead_quartiles(times: dict, name: str) -> list:
    """Quartiles of the per-round ratios times[name] / times["ntp"]: the median is the measured overhead + 1. The
    machine's load comes in spells (steps of 770 ms, then 1,000 ms for a while, here) that hit the steps of one
    round alike but not the medians of whole runs."""
    ratios = [b / a for a, b in zip(times["ntp"], times[name])]
    return statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3


def peer_result(name, times, peaks, cfg, mcfg, peak, cuda) -> dict:
    """One peer's figures (mtp, nextlat): its step against NTP's, measured and by the FLOPs accounting (its
    defaults: MTP depth 1; docs/method.md, "Peers: MTP and NextLat"), here and at 9bA1b's size."""
    objective = resolve_objective(ObjectiveConfig(objective=name), mcfg)
    cost = flops.flops_per_token(mcfg, cfg.seq_len, **flops.aux_flops_kwargs(objective, mcfg))
    big = model_lib.get_preset("9bA1b")
    big_full = flops.flops_per_token(big, 8192, **flops.aux_flops_kwargs(objective, big))["aux_ratio"]
    (low, median, high), step_s = overhead_quartiles(times, name), statistics.median(times[name])
    tokens = cfg.batch_size * cfg.seq_len
    return {"step_ms": 1e3 * step_s, "tokens_per_s": tokens / step_s, "overhead_measured": median - 1,
            "overhead_round_iqr": [low - 1, high - 1], "overhead_flops": cost["aux_ratio"],
            "flops_per_token_extra": cost["aux_extra"], "overhead_flops_9bA1b_full": big_full,
            "peak_mem_gib": peaks[name] / 2**30 if cuda else None,
            "mfu": tokens / step_s * (cost["ntp"] + cost["aux_extra"]) / peak if cuda and peak else None}


def run_benchmark(cfg: BenchConfig) -> dict:
    """Measure as configured -> the dict that --json prints."""
    cfg, mcfg = resolve(cfg)
    device = torch.device(cfg.device)
    cuda = device.type == "cuda"
    runtime.setup_device(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    with cpu_threads(0 if cuda else cfg.threads):
        threads = torch.get_num_threads()
        times, peaks = time_interleaved(training_steps(cfg, mcfg, device, autocast), cfg.rounds, cfg.warmup,
                                        device, "training steps")
        part_times, _ = time_interleaved(nitp_parts(cfg, mcfg, device, autocast), cfg.rounds, cfg.warmup, device,
                                         "NITP's parts alone")
        head_times, head_peaks = time_interleaved(loss_head_steps(cfg, mcfg, device, autocast), cfg.rounds,
                                                  cfg.warmup, device, "loss head: plain vs chunked")
        layer_runs, moe_about, moe_path = moe_and_dense_layers(cfg, device, autocast)
        layer_times, _ = time_interleaved(layer_runs, cfg.rounds, cfg.warmup, device, "MoE vs dense layer")

    nitp = flops.aux_flops_kwargs(ObjectiveConfig(projector_hidden=cfg.projector_hidden), mcfg)  # from the head
    cost = flops.flops_per_token(mcfg, cfg.seq_len, **nitp)
    paper = flops.flops_per_token(mcfg, cfg.seq_len, **nitp, paper_mode=True)
    big = model_lib.get_preset("9bA1b")
    big_nitp = flops.aux_flops_kwargs(ObjectiveConfig(), big)  # the paper's 4 d SwiGLU head
    big_paper, big_full = (flops.flops_per_token(big, 8192, **big_nitp, paper_mode=mode)["aux_ratio"]
                           for mode in (True, False))
    ntp_s, nitp_s = (statistics.median(times[name]) for name in ("ntp", "nitp"))
    quartiles = overhead_quartiles(times, "nitp")
    tokens, peak = cfg.batch_size * cfg.seq_len, cfg.peak_flops or flops.peak_bf16_flops(device)
    moe_tps, dense_tps = (cfg.layer_tokens / statistics.median(layer_times[name]) for name in ("moe", "dense"))
    r = {"preset": cfg.preset, "device": torch.cuda.get_device_name(device) if cuda else "cpu", "dtype": cfg.dtype,
         "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "rounds": cfg.rounds, "compile": cfg.compile,
         "threads": threads, "target_layer": cfg.target_layer, "clock": "wall" if cuda else "process CPU time",
         "ntp_step_ms": 1e3 * ntp_s, "nitp_step_ms": 1e3 * nitp_s,
         "overhead_measured": quartiles[1] - 1, "overhead_of_medians": nitp_s / ntp_s - 1,
         "overhead_round_iqr": [quartiles[0] - 1, quartiles[2] - 1],  # quartiles of the per-round nitp/ntp - 1
         "overhead_flops": cost["aux_ratio"],  # the floor, full count: attention scores, router, dense block
         "overhead_flops_paper": paper["aux_ratio"],
         "overhead_flops_9bA1b_paper": big_paper, "overhead_flops_9bA1b_full": big_full,
         "flops_per_token_ntp": cost["ntp"], "flops_per_token_nitp_extra": cost["aux_extra"],
         "projector_ms": 1e3 * statistics.median(part_times["projector"]),  # fwd + bwd, alone
         "nitp_loss_ms": 1e3 * statistics.median(part_times["nitp_loss"]),
         "ntp_tokens_per_s": tokens / ntp_s, "nitp_tokens_per_s": tokens / nitp_s,
         "peak_mem_ntp_gib": peaks["ntp"] / 2**30 if cuda else None,
         "peak_mem_nitp_gib": peaks["nitp"] / 2**30 if cuda else None,
         # KiB on Linux; for the whole process: every objective, the layers and anything before
         "max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak_flops": peak,
         "mfu_ntp": tokens / ntp_s * cost["ntp"] / peak if cuda and peak else None,
         "mfu_nitp": tokens / nitp_s * (cost["ntp"] + cost["aux_extra"]) / peak if cuda and peak else None,
         "moe_layer": moe_about, "moe_path": moe_path, "layer_tokens": cfg.layer_tokens,
         "moe_tokens_per_s": moe_tps, "dense_tokens_per_s": dense_tps, "moe_vs_dense": moe_tps / dense_tps}
    r["peers"] = {name: peer_result(name, times, peaks, cfg, mcfg, peak, cuda) for name in OBJECTIVES[2:]}
    head_ratios = [b / a for a, b in zip(head_times["plain"], head_times["chunked"])]
    peaks_head = head_peaks if cuda else cpu_peak_memory(cfg, mcfg)
    r.update({"ce_chunk": cfg.ce_chunk, "head_chunked_vs_plain_time": statistics.median(head_ratios),
              "head_peak_plain_gib": peaks_head["plain"] / 2**30,
              "head_peak_chunked_gib": peaks_head["chunked"] / 2**30,
              "head_peak_kind": "CUDA max allocated" if cuda else "peak RSS of a fresh process (2 steps)",
              "head_logits_gib": cfg.batch_size * cfg.seq_len * mcfg.vocab_size * 8 / 2**30})
    moe_floor = 0.7 if cuda else 0.5  # the README's targets; MFU's is for H100 + gpt2-124m + bf16 + compile only
    mfu_case = r["mfu_ntp"] is not None and "H100" in r["device"] and cfg.preset == "gpt2-124m" and cfg.compile
    r["targets"] = {"overhead_within_1pt": abs(r["overhead_measured"] - r["overhead_flops"]) <= 0.01,
                    f"moe_vs_dense_at_least_{moe_floor}": r["moe_vs_dense"] >= moe_floor,
                    "mfu_at_least_0.45": r["mfu_ntp"] >= 0.45 if mfu_case and cfg.dtype == "bfloat16" else None}
    return r


def format_table(r: dict) -> str:
    def pct(x):
        return f"{100 * x:+.2f}%"

    def cell(value, spec):
        return "-" if value is None else format(value, spec)

    low, high = r["overhead_round_iqr"]
    rows = [("step time (ms, median)", "ntp_step_ms", "nitp_step_ms", ".1f"),
            ("tokens/s", "ntp_tokens_per_s", "nitp_tokens_per_s", ",.0f"),
            ("peak memory (GiB, CUDA)", "peak_mem_ntp_gib", "peak_mem_nitp_gib", ".2f"),
            ("MFU (CUDA)", "mfu_ntp", "mfu_nitp", ".1%")]
    lines = [f"bench: {r['preset']} on {r['device']} ({r['dtype']}, {r['threads']} thread(s), compile "
             f"{r['compile']}), batch {r['batch_size']} x {r['seq_len']}, {r['rounds']} interleaved rounds, "
             f"clock: {r['clock']}", f"{'':26}{'NTP':>12}{'NITP':>12}"]
    lines += [f"{name:26}{cell(r[a], spec):>12}{cell(r[b], spec):>12}" for name, a, b, spec in rows]
    lines += [
        f"max RSS {r['max_rss_gib']:.2f} GiB (the whole process)",
        f"NITP overhead: measured {pct(r['overhead_measured'])} (median of per-round ratios, IQR {pct(low)} .. "
        f"{pct(high)}; of the medians {pct(r['overhead_of_medians'])}); "
        f"FLOPs floor {pct(r['overhead_flops'])} (full count), {pct(r['overhead_flops_paper'])} (paper mode)",
        f"NITP's parts alone (fwd+bwd): projector {r['projector_ms']:.1f} ms, loss {r['nitp_loss_ms']:.1f} ms = "
        f"{pct((r['projector_ms'] + r['nitp_loss_ms']) / r['ntp_step_ms'])} of the NTP step",
        f"9bA1b FLOPs overhead: {pct(r['overhead_flops_9bA1b_paper'])} paper mode (spec: ~2.3%), "
        f"{pct(r['overhead_flops_9bA1b_full'])} full count at T=8192 (the paper measured +1.8% wall clock)",
        f"MoE layer ({r['moe_layer']}; {r['moe_path']}, {r['layer_tokens']} tokens, fwd+bwd): "
        f"{r['moe_tokens_per_s']:,.0f} vs dense {r['dense_tokens_per_s']:,.0f} tokens/s = {r['moe_vs_dense']:.2f}x",
        f"loss head ({r['ce_chunk']} positions a chunk vs full logits; logits + their gradient in fp32 "
        f"{r['head_logits_gib']:.2f} GiB): step time {r['head_chunked_vs_plain_time']:.3f}x the plain head's; "
        f"{r['head_peak_kind']}: {r['head_peak_plain_gib']:.2f} GiB plain, "
        f"{r['head_peak_chunked_gib']:.2f} GiB chunked",
        *(f"{name.upper() if name == 'mtp' else 'NextLat'} (defaults): step {p['step_ms']:.1f} ms, "
          f"{p['tokens_per_s']:,.0f} tokens/s; overhead measured {pct(p['overhead_measured'])} (IQR "
          f"{pct(p['overhead_round_iqr'][0])} .. {pct(p['overhead_round_iqr'][1])}), FLOPs floor "
          f"{pct(p['overhead_flops'])}; 9bA1b FLOPs overhead {pct(p['overhead_flops_9bA1b_full'])} (full count)"
          for name, p in r["peers"].items()),
        "targets: " + ", ".join(f"{k} {'n/a' if v is None else 'met' if v else 'MISSED'}"
                                for k, v in r["targets"].items())]
    if r["mfu_ntp"] is not None:
        lines.append(f"MFU = tokens/s x flops_per_token (full count; causal attention scores at T/2 keys, where "
                     f"nanoGPT counts T) / {r['peak_flops'] / 1e12:.0f} TFLOP/s (bf16 dense peak)")
    return "\n".join(lines)


def main(argv=None) -> int:
    try:
        result = run_benchmark(cfg := parse_config(argv))
    except ValueError as err:  # a bad flag or value; the message names it and the fix
        print(f"bench.py: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result) if cfg.json else format_table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
