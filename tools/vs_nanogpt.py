"""tools/vs_nanogpt.py: our training step against nanoGPT's at the same shape, on CPU, in one process.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT          # nanoGPT is not part of this repo
    python tools/vs_nanogpt.py --nanogpt=/tmp/nanoGPT                 # 16 interleaved rounds
    python tools/vs_nanogpt.py --nanogpt=/tmp/nanoGPT --parts         # + blocks, loss head and AdamW alone
    python tools/vs_nanogpt.py --nanogpt=/tmp/nanoGPT --profile       # + where the blocks' time goes, by op
    python tools/vs_nanogpt.py --fused                                # fused.py's Functions against autograd

Our `small` preset (d 256, 6 blocks, 8 query / 4 KV heads, SwiGLU 768, RoPE, RMSNorm, vocab 50,304) against
nanoGPT's GPT at the same width, depth, heads and vocabulary (GELU MLP 1024, learned positions, LayerNorm,
no biases): the same matmul FLOPs per token. Each round runs one training step of each model (forward,
backward, AdamW), in flipped order every other round; the figure is the median over rounds of our step's CPU
time over nanoGPT's (time.process_time: both threads). Each step uses its own repository's AdamW: ours the
implementation train.py picks (runtime.adamw_options: fused on CPU), nanoGPT's from its configure_optimizers
(fused only on CUDA, so torch's default on CPU).
nanoGPT's model.py is loaded from the folder given, never copied. fp32, eager, batch 8 x 256.
--fused needs no nanoGPT: our six blocks with and without fused.py, then each of its Functions (forward and
backward at the blocks' shapes) against the plain formula it replaces, the same way.
"""

import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as tools/NAME.py: the core is one level up
import model as ours  # noqa: E402
from support import (
    cli,  # noqa: E402
    fused,  # noqa: E402
    runtime,  # noqa: E402
)


def load_nanogpt(folder):
    path = Path(folder) / "model.py"
    if not path.is_file():
        raise FileNotFoundError(f"no nanoGPT model.py in {folder}; clone https://github.com/karpathy/nanoGPT "
                                "and pass --nanogpt=THAT_FOLDER")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def interleaved(pair: dict, rounds: int, warmup: int = 2) -> dict:
    """{name: [CPU seconds per round]} for the two callables, order flipped every other round."""
    times = {name: [] for name in pair}
    names = list(pair)
    for r in range(warmup + rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.process_time()
            pair[name]()
            if r >= warmup:
                times[name].append(time.process_time() - start)
    return times


def ratio_line(label, times) -> str:
    """The first callable's median CPU time over the second's, as the median of per-round ratios."""
    a, b = times
    ratios = [x / y for x, y in zip(times[a], times[b])]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return (f"{label:<8} {a} {1e3 * statistics.median(times[a]):7.1f} ms, {b} {1e3 * statistics.median(times[b]):7.1f}"
            f" ms CPU; {a}/{b} {statistics.median(ratios):.3f} (IQR {q1:.3f} .. {q3:.3f}, {len(ratios)} rounds)")


def backward_of(fn, *inputs, calls: int = 1):
    """A callable running fn(*inputs) forward and backward `calls` times (inputs: leaves that require grad)."""
    grad = torch.randn_like(fn(*inputs))

    def run():
        for _ in range(calls):
            fn(*inputs).backward(grad)
    return run


def without_fused(fn):
    """fn with fused.py switched off while it runs: model.py then takes its plain formulas."""
    def run(*args):
        with fused.disabled():
            return fn(*args)
    return run


def profile_table(runs: dict, iters: int = 6, top: int = 14) -> None:
    """Self CPU time per op (torch.profiler; ms per call, the median over `iters` calls made in turn, so that a
    slow spell of the machine hits every callable alike) for {name: callable}, side by side: the union of each
    one's `top` most expensive ops."""
    from torch.profiler import ProfilerActivity, profile
    calls = {name: [] for name in runs}  # {name: [{op: ms}]}
    for r in range(iters + 1):
        for name, run in runs.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run()
            ops = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
            ops["(total)"] = sum(ops.values())
            if r > 0:  # the first round warms up
                calls[name].append(ops)
    per_op = {name: {op: statistics.median(c.get(op, 0.0) for c in calls[name]) for op in calls[name][0]}
              for name in runs}
    ranked = {name: sorted(ops, key=lambda op: -ops[op]) for name, ops in per_op.items()}
    keys = list(dict.fromkeys(op for name in runs for op in ranked[name][:top]))
    print(f"{'op (self CPU ms per call)':<44}" + "".join(f"{name:>14}" for name in runs))
    for key in keys:
        print(f"{key[:44]:<44}" + "".join(f"{per_op[name].get(key, 0.0):14.1f}" for name in runs))


def fused_parts(config, rounds) -> None:
    """Our blocks with and without fused.py, then each Function against its plain formula, called as many times
    as one training step calls it (RoPE on q and on k in every block, two norms a block and the final one)."""
    torch.manual_seed(0)
    model = ours.GPT(config)
    B, T, d, hd = 8, config.block_size, config.d_model, config.head_size
    cos, sin = ours.rope_cos_sin(T, hd, config.rope_theta)
    h = torch.randn(B, T, d, requires_grad=True)

    def blocks(x):
        for block in model.blocks:
            x, _ = block(x, cos, sin)
        return x

    qk = torch.randn(B, T, config.n_head + config.kv_heads, hd).transpose(1, 2).requires_grad_()  # (B, H, T, hd)
    gate_up = torch.randn(B, T, 2 * config.d_ff, requires_grad=True)

    norm = model.norm

    def rope(x):
        return ours.apply_rope(x, cos, sin)

    L = config.n_layer  # q and k together: the same elements as the two calls a block makes
    parts = {"blocks": (blocks, (h,), 1), "rope": (rope, (qk,), L), "rms_norm": (norm, (h,), 2 * L + 1),
             "swiglu": (ours.silu_gate, (gate_up,), L)}
    for label, (fn, inputs, calls) in parts.items():
        fast, plain = (backward_of(f, *inputs, calls=calls) for f in (fn, without_fused(fn)))
        print(ratio_line(label, interleaved({"fused": fast, "plain": plain}, rounds)), flush=True)


def main(argv=None) -> int:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", help="a nanoGPT checkout (its model.py is loaded)")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--parts", action="store_true", help="also time the blocks, the loss head and AdamW")
    parser.add_argument("--profile", action="store_true", help="also profile the blocks by op (ours with and "
                        "without fused.py, nanoGPT's)")
    parser.add_argument("--fused", action="store_true", help="only fused.py's Functions against autograd's")
    args = parser.parse_args(argv)
    if args.nanogpt is None and not args.fused:
        print("vs_nanogpt.py: error: --nanogpt=DIR is required (a clone of https://github.com/karpathy/nanoGPT), "
              "unless --fused", file=sys.stderr)
        return 2
    if args.fused:
        runtime.setup_device(torch.device("cpu"))
        fused_parts(ours.get_preset("small"), args.rounds)
        return 0
    try:
        nano = load_nanogpt(args.nanogpt)
    except FileNotFoundError as err:
        print(f"vs_nanogpt.py: error: {err}", file=sys.stderr)
        return 2
    runtime.setup_device(torch.device("cpu"))  # the same CPU settings for both models
    torch.manual_seed(0)
    config = ours.get_preset("small")
    models = {"ours": ours.GPT(config),
              "nanoGPT": nano.GPT(nano.GPTConfig(block_size=config.block_size, vocab_size=config.vocab_size,
                                                 n_layer=config.n_layer, n_head=config.n_head,
                                                 n_embd=config.d_model, dropout=0.0, bias=False))}
    print(f"params: ours {models['ours'].num_params() / 1e6:.2f}M, nanoGPT "
          f"{sum(p.numel() for p in models['nanoGPT'].parameters()) / 1e6:.2f}M")
    x = torch.randint(0, config.vocab_size, (8, config.block_size))  # (B, T)
    y = torch.randint(0, config.vocab_size, (8, config.block_size))  # (B, T)
    optimizers = {"ours": torch.optim.AdamW(models["ours"].parameters(), lr=1e-4, betas=(0.9, 0.95),
                                            weight_decay=0.1, **runtime.adamw_options(torch.device("cpu"))),
                  "nanoGPT": models["nanoGPT"].configure_optimizers(0.1, 1e-4, (0.9, 0.95), "cpu")}

    def step_ours():
        out = models["ours"](x, compute_logits=False, targets=y)
        (out.ce_sum / y.numel()).backward()
        optimizers["ours"].step()
        optimizers["ours"].zero_grad(set_to_none=True)

    def step_nano():
        _, loss = models["nanoGPT"](x, y)
        loss.backward()
        optimizers["nanoGPT"].step()
        optimizers["nanoGPT"].zero_grad(set_to_none=True)

    print(ratio_line("step", interleaved({"ours": step_ours, "nanoGPT": step_nano}, args.rounds)), flush=True)
    if not (args.parts or args.profile):
        return 0
    h = torch.randn(8, config.block_size, config.d_model, requires_grad=True)  # (B, T, d)
    grad = torch.randn_like(h)
    cos, sin = ours.rope_cos_sin(config.block_size, config.head_size, config.rope_theta)

    def blocks_ours():
        out = h
        for block in models["ours"].blocks:
            out, _ = block(out, cos, sin)
        out.backward(grad)

    def blocks_nano():
        out = h
        for block in models["nanoGPT"].transformer.h:
            out = block(out)
        out.backward(grad)

    def head_ours():
        ours.cross_entropy_sum(h, models["ours"].lm_head.weight, y).backward()

    def head_nano():
        logits = models["nanoGPT"].lm_head(h)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()

    for m in models.values():  # AdamW alone needs gradients to step on
        for p in m.parameters():
            p.grad = torch.randn_like(p) * 1e-3
    parts = {"blocks": (blocks_ours, blocks_nano), "head": (head_ours, head_nano),
             "AdamW": (optimizers["ours"].step, optimizers["nanoGPT"].step)}
    for label, (a, b) in parts.items() if args.parts else ():
        print(ratio_line(label, interleaved({"ours": a, "nanoGPT": b}, args.rounds)), flush=True)
    if args.profile:
        print("the six blocks, forward and backward:")
        profile_table({"ours": blocks_ours, "ours plain": without_fused(blocks_ours), "nanoGPT": blocks_nano})
    return 0


if __name__ == "__main__":
    sys.exit(main())
