"""Tests for runtime.py: flags into dataclasses, and the device setup on CUDA with CUDA faked on this CPU machine
(torch.cuda.set_device gets torch's own index validation, the check that a bare "cuda" device used to fail),
single process and under torchrun; the end-to-end error of --device=cuda without a GPU."""

from dataclasses import dataclass

import pytest
import torch

import train
from support import runtime


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA with two GPUs, as far as runtime.py can tell; set_device records the index torch would validate."""
    selected = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    # the real set_device's validation: a torch.device("cuda") without an index raises here
    monkeypatch.setattr(torch.cuda, "set_device",
                        lambda device: selected.append(torch.cuda._utils._get_device_index(device, optional=False)))
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    return selected


def torchrun_env(monkeypatch, local_rank, world=2):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(local_rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))


def test_single_process_cuda_gets_an_index(fake_cuda):
    for spec, expected in [("cuda", 0), ("auto", 0), ("cuda:1", 1)]:
        device = runtime.resolve_device(spec)
        assert device == torch.device("cuda", expected)
        runtime.setup_device(device)  # the startup crash: set_device(torch.device("cuda")) without an index
        assert fake_cuda[-1] == expected
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="cuda:2 does not exist.*2 visible"):
        runtime.resolve_device("cuda:2")


def test_under_torchrun_each_rank_takes_its_local_gpu(fake_cuda, monkeypatch):
    torchrun_env(monkeypatch, local_rank=1)
    assert runtime.resolve_device("cuda") == runtime.resolve_device("auto") == torch.device("cuda", 1)
    runtime.setup_device(runtime.resolve_device("cuda"))
    assert fake_cuda == [1]
    with pytest.raises(ValueError, match="under torchrun.*--device=cuda"):
        runtime.resolve_device("cuda:0")  # every rank on one GPU
    torchrun_env(monkeypatch, local_rank=3, world=4)
    with pytest.raises(ValueError, match="cuda:3 does not exist"):
        runtime.resolve_device("cuda")  # more processes per node than GPUs


def test_cuda_without_cuda_and_bad_names_are_clear_errors(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="no usable CUDA GPU.*--device=cpu"):
            runtime.resolve_device(spec)
    for spec in ("gpu", "cuda:x", "cuda0", ""):
        with pytest.raises(ValueError, match="not a device"):
            runtime.resolve_device(spec)
    assert train.main(["--device=cuda", f"--out_dir={tmp_path}"]) == 2  # one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: device='cuda' but this machine has no usable CUDA GPU")
    assert err.count("\n") == 1


@dataclass
class Example:
    steps: int = 3
    rate: float | None = None
    name: str = "x"
    on: bool = False


def test_parse_flags_types_and_errors():
    cfg = runtime.parse_flags(["--steps=5", "--rate=none", "--on", "--name=y"], Example, "prog")
    assert cfg == Example(steps=5, rate=None, name="y", on=True)
    assert runtime.parse_flags(["--rate=0.5", "--on=0"], Example, "prog") == Example(rate=0.5, on=False)
    for argv, match in [(["--nope=1"], "unknown option '--nope=1'; prog takes"),
                        (["--steps=1.5"], "'steps' expects int"), (["--on=maybe"], "expects a bool"),
                        (["steps=1"], "expected --key=value")]:
        with pytest.raises(ValueError, match=match):
            runtime.parse_flags(argv, Example, "prog")


def test_flags_may_be_written_key_space_value():
    """`--key value` as argparse reads it: the next argument is the value unless it starts with "--"; a bare
    `--flag` before another flag (or at the end) is true; the flag comes back as `--key=value` (compare.py passes
    it on to train.py). Other arguments go to `positional` when one is given."""
    argv = ["--steps", "5", "--on", "--rate", "none", "--name", "-y"]
    assert runtime.parse_flags(argv, Example, "prog") == Example(steps=5, rate=None, name="-y", on=True)
    assert runtime.split_flags(["--steps", "5", "--on"]) == [("steps", "5", "--steps=5"), ("on", "true", "--on")]
    positional = []
    assert runtime.parse_flags(["RUN", "--steps", "2", "--on=0"], Example, "prog", positional) == Example(steps=2)
    assert positional == ["RUN"]
    with pytest.raises(ValueError, match="'steps' expects int, got 'RUN'"):
        runtime.parse_flags(["--steps", "RUN"], Example, "prog")


def test_adamw_options_pick_the_fused_kernel_on_cpu_with_the_loop_s_results():
    """Fused on CPU and on CUDA (its found_inf skips a non-finite update: tests/test_parallel.py); the fused kernel
    follows the default loop to float32 rounding (rtol 1e-6: the same update in another order, over 5 steps),
    while a wrong option (say, no weight decay) is off by lr * wd * w = 1e-3 relative."""
    assert runtime.adamw_options(torch.device("cpu")) == {"fused": True}
    assert runtime.adamw_options(torch.device("cuda", 0)) == {"fused": True}
    torch.manual_seed(0)
    weights = [torch.randn(8, 4), torch.randn(4)]
    results = []
    for options in ({}, runtime.adamw_options(torch.device("cpu"))):
        params = [w.clone().requires_grad_() for w in weights]
        optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, **options)
        for step in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
            optimizer.step()
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_clip_grad_norm_ignores_zero_grads_exactly():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(7, 5)) for _ in range(9)]
    for p in params:
        p.grad = torch.randn_like(p)
    zeros = [torch.nn.Parameter(torch.randn(3, 3)) for _ in range(4)]
    for p in zeros:
        p.grad = torch.zeros_like(p)
    grads_before = [p.grad.clone() for p in params]
    norm = runtime.clip_grad_norm(params, 1.0)
    clipped = [p.grad.clone() for p in params]
    for p, g in zip(params, grads_before):
        p.grad = g.clone()
    assert torch.equal(runtime.clip_grad_norm(params + zeros, 1.0), norm)
    assert all(torch.equal(p.grad, c) for p, c in zip(params, clipped))
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads_before]))
    torch.testing.assert_close(norm, expected)  # float32 rounding only
    assert torch.linalg.vector_norm(torch.cat([c.flatten() for c in clipped])).item() == pytest.approx(1.0, rel=1e-5)
