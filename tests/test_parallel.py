"""Tests of support/parallel.py and of the step's reads of the device: auto's rule, no host sync inside a step,
the multi-tensor clip, the fused AdamW's found_inf, and one model over many gloo processes on CPU (torchrun): DDP
and FSDP2 at 2 and 8 processes and two torchrun launchers as one 4-rank job give the 1-process losses and
evaluation geometry, and a checkpoint saved by 8 processes resumes on 2 (the other wrapper) and on 1.
The torchrun cases are the slow tests of this file."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import REPO, torchrun, train_lines
from test_train import data_dir, tiny_config  # noqa: F401 (data_dir is a fixture)

import train
from support import metrics, parallel, runtime


# ---------------------------------------------------------------------------- auto's rule
def test_auto_picks_ddp_when_the_replicated_state_fits_and_fsdp_when_not():
    assert parallel.choose("auto", 1, False)[0] == "none"  # one process: no wrapper, whatever is asked
    assert parallel.choose("fsdp", 1, True)[0] == "none"
    assert parallel.choose("auto", 8, True) == ("ddp", "auto: the replicated weights, gradients and AdamW state fit "
                                                       "every device")
    assert parallel.choose("auto", 8, False)[0] == "fsdp"
    assert parallel.choose("ddp", 2, True)[0] == "ddp" and parallel.choose("fsdp", 2, True)[0] == "fsdp"


# ---------------------------------------------------------------------------- no host sync inside a step
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


def in_cpu_token_check() -> bool:
    """Whether the caller is model.GPT.check_input: on CPU it reads the batch's min and max (host memory, nothing
    to wait for), on CUDA it is torch._assert_async, which reads nothing."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "check_input" and frame.f_code.co_filename.endswith("model.py"):
            return True
        frame = frame.f_back
    return False


def count_device_reads(monkeypatch):
    """A counter of the tensor methods that copy a value from the device to the host (on CUDA, each waits for
    the work queued before it)."""
    counts = {"reads": 0}
    for name in READS:
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, **k):
            counts["reads"] += not in_cpu_token_check()
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return counts


@pytest.mark.parametrize("on_nonfinite", ["stop", "skip"])
def test_the_device_is_read_per_log_line_not_per_step(tmp_path, data_dir, monkeypatch, on_nonfinite):  # noqa: F811
    """A run of N steps and one of 3N steps that both write one train line (log_interval = max_steps, no eval, a
    checkpoint at the end only) read the device the same number of times: the non-finite check, the loss EMA and
    the stop flag stay on the device (or the host) between log lines."""
    counts = count_device_reads(monkeypatch)
    reads = []
    for steps in (4, 12):
        counts["reads"] = 0
        train.train(tiny_config(tmp_path / f"run{steps}", data_dir, objective="nitp", max_steps=steps,
                                log_interval=steps, eval_batches=0, batch_size=1, on_nonfinite=on_nonfinite))
        reads.append(counts["reads"])
        assert len(train_lines(tmp_path / f"run{steps}")) == 1
    assert reads[0] > 0 and reads[1] == reads[0], reads  # > 0: the spy does see the log line's reads


def nan_at_forward(monkeypatch, n: int) -> None:
    """The n-th forward pass of train.py (with one micro-batch a step: step n's) gives a NaN loss."""
    real, calls = train.forward_terms, []

    def forward_terms(*a, **k):
        calls.append(1)
        terms = real(*a, **k)
        if len(calls) == n:
            terms.ce_sum = terms.ce_sum * float("nan")
        return terms

    monkeypatch.setattr(train, "forward_terms", forward_terms)


def test_a_non_finite_step_between_log_lines_is_reported_with_its_step(tmp_path, data_dir, monkeypatch):  # noqa
    """Step 2 is NaN, the device is read at step 3's log line: the error names step 2, and the update of step 3
    (finite) was skipped too, so no weights after the last good ones were ever applied or saved."""
    nan_at_forward(monkeypatch, 2)  # one micro-batch a step (batch_size=4)
    cfg = tiny_config(tmp_path / "out", data_dir, objective="nitp", max_steps=6, log_interval=3, eval_batches=0,
                      batch_size=4)
    with pytest.raises(train.NonFiniteLoss, match=r"^step 2: non-finite loss or gradient \(loss_ntp nan"):
        train.train(cfg)
    assert not (tmp_path / "out" / "checkpoints").exists() or not any((tmp_path / "out" / "checkpoints").iterdir())


def test_a_halted_run_applies_no_update_after_the_non_finite_step(tmp_path, data_dir, monkeypatch):  # noqa: F811
    """--on_nonfinite=stop between two reads of the device: from the non-finite step on, every update is skipped
    on the device (run.halted), so the weights stay those after the last good step, bit for bit."""
    steps = []
    real_step = train.train_step

    def record(run):
        stats = real_step(run)
        steps.append({k: v.clone() for k, v in run.model.state_dict().items()})
        return stats

    monkeypatch.setattr(train, "train_step", record)
    nan_at_forward(monkeypatch, 3)
    with pytest.raises(train.NonFiniteLoss, match="^step 3: "):
        train.train(tiny_config(tmp_path / "out", data_dir, objective="nitp", max_steps=5, log_interval=5,
                                eval_batches=0, batch_size=4))
    assert len(steps) == 5 and any(not torch.equal(steps[1][k], steps[0][k]) for k in steps[0])  # step 2 trained
    for later in steps[2:]:  # steps 3, 4, 5: nothing moved
        assert all(torch.equal(later[k], steps[1][k]) for k in steps[1])


# ---------------------------------------------------------------------------- the fast optimizer and clip
def test_the_multi_tensor_clip_is_the_loop_s_to_float32_rounding():
    """clip_grad_norm through _foreach_norm (CUDA's path, run here on CPU) against the per-tensor loop: the same
    norm and the same clipped gradients to float32 rounding (the same squares, summed in another grouping)."""
    torch.manual_seed(0)
    shapes = [(64, 32), (32,), (7, 5, 3), (1,), (128, 64)]
    grads = [torch.randn(s) * (i + 1) for i, s in enumerate(shapes)]
    results = []
    for multi in (False, True):
        params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        norm = runtime.clip_grad_norm(params, 1.0, multi_tensor=multi)
        results.append((norm, [p.grad for p in params]))
    (loop_norm, loop_grads), (multi_norm, multi_grads) = results
    assert loop_norm > 1.0  # the clip did act
    torch.testing.assert_close(multi_norm, loop_norm, rtol=1e-6, atol=0)
    for a, b in zip(multi_grads, loop_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    expected = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))  # float64 reference
    torch.testing.assert_close(loop_norm.double(), expected, rtol=1e-6, atol=0)


def test_fused_adamw_found_inf_skips_the_whole_update_and_zero_is_a_plain_step():
    """found_inf = 1: weights, both moments and the step count stay as they were; found_inf = 0: the same update as
    no found_inf at all, bit for bit. train.py's non-finite policy relies on both."""
    def make():
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(8, 4))
        opt = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.1, **runtime.adamw_options(torch.device("cpu")))
        for _ in range(2):  # some state to keep
            p.grad = torch.randn(8, 4)
            opt.step()
        p.grad = torch.randn(8, 4)
        return p, opt

    p, opt = make()
    before = (p.detach().clone(), opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone(),
              opt.state[p]["step"].clone())
    opt.found_inf = torch.ones(())
    opt.step()
    after = (p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"], opt.state[p]["step"])
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    stepped = []
    for found_inf in (None, torch.zeros(())):
        p, opt = make()
        if found_inf is not None:
            opt.found_inf = found_inf
        opt.step()
        stepped.append(p.detach().clone())
    assert torch.equal(stepped[0], stepped[1]) and not torch.equal(stepped[0], before[0])


# ---------------------------------------------------------------------------- many processes, one model
FIELDS = dict(objective="nitp", seq_len=16, global_batch_tokens=128, batch_size=None, decay_frac=0.0,
              mask_doc_boundary=True, eval_batches=1, eval_interval=2, ckpt_interval=0)  # 8 sequences a step
GEOMETRY = (metrics.EFFECTIVE_RANK, metrics.AVG_COSINE, metrics.TARGET_EFFECTIVE_RANK, metrics.TARGET_AVG_COSINE)


def records(out_dir, kind):
    return {r["step"]: r for r in map(json.loads, (Path(out_dir) / "log.jsonl").read_text().splitlines())
            if r["kind"] == kind}


def assert_same_run(run, reference, steps):
    """The train lines and the eval lines (val loss, val NITP loss, the four geometry figures) of `steps` equal the
    1-process reference's up to float32 reassociation: gloo sums the gradients in another order, AdamW turns that
    into weight differences near 1e-6 (test_distributed.py), and the losses and the geometry move by less than
    1e-5 relative; a rank's share of the states instead of all of them moves the geometry by tens of percent."""
    train_a, train_b, eval_a, eval_b = (records(d, k) for k in ("train", "eval") for d in (reference, run))
    for step in steps:
        for key in ("loss_ntp", "loss_nitp"):
            assert train_b[step][key] == pytest.approx(train_a[step][key], rel=1e-5), (run.name, step, key)
        if step in eval_a:
            for key in (metrics.VAL_LOSS, "val_loss_nitp", *GEOMETRY):
                assert eval_b[step][key] == pytest.approx(eval_a[step][key], rel=1e-4), (run.name, step, key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):  # noqa: F811
    """One process, 3 steps, evaluated at steps 2 and 3."""
    out = tmp_path_factory.mktemp("parallel") / "one"
    train.train(tiny_config(out, data_dir, **FIELDS, max_steps=3))
    assert sorted(records(out, "eval")) == [2, 3]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_give_the_one_process_losses_and_geometry(tmp_path, data_dir, reference, mode):  # noqa: F811
    out = torchrun(tiny_config(tmp_path / mode, data_dir, **FIELDS, max_steps=3, data_parallel=mode))
    assert f"data parallel: {mode} (--data_parallel={mode})" in out
    assert_same_run(tmp_path / mode, reference, steps=(1, 2, 3))
    config = json.loads((tmp_path / mode / "log.jsonl").read_text().splitlines()[0])
    assert config["world_size"] == 2 and config["train_config"]["data_parallel"] == mode


@pytest.mark.slow
@pytest.mark.parametrize("mode, other", [("ddp", "fsdp"), ("fsdp", "ddp")])
def test_eight_processes_match_one_and_their_checkpoint_resumes_on_two_and_one(tmp_path, data_dir,  # noqa: F811
                                                                               reference, mode, other):
    """8 processes (one sequence each) train steps 1-2 and evaluate at step 2 as 1 process does; their checkpoint
    (DCP, 8 shards under FSDP2) continues to step 3 on 2 processes under the other wrapper and on 1 process, with
    the uninterrupted 1-process run's step-3 losses and evaluation."""
    eight = tmp_path / "eight"
    torchrun(tiny_config(eight, data_dir, **FIELDS, max_steps=2, data_parallel=mode), nproc=8)
    assert json.loads((eight / "log.jsonl").read_text().splitlines()[0])["world_size"] == 8
    assert_same_run(eight, reference, steps=(1, 2))
    shutil.copytree(eight, tmp_path / "on_one")
    torchrun(tiny_config(eight, data_dir, **FIELDS, max_steps=3, resume=True, data_parallel=other))
    train.train(tiny_config(tmp_path / "on_one", data_dir, **FIELDS, max_steps=3, resume=True))
    for run in (eight, tmp_path / "on_one"):
        assert [r["world_size"] for r in records(run, "resume").values()] == [2 if run == eight else 1]
        assert_same_run(run, reference, steps=(1, 2, 3))


# the README's launchers, as these tests run them on one machine: 8 for the GPUs of a node, 2 for N, 127.0.0.1 for
# HOST0 (torchrun's c10d rendezvous: the launcher whose host matches the endpoint serves the store)
EIGHT_GPUS = "torchrun --standalone --nproc_per_node=8 train.py"
NODES = "torchrun --nnodes=N --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 --rdzv_id=nitp"


def test_the_readme_launches_as_these_tests_do():
    readme = " ".join((REPO / "README.md").read_text().replace("\\\n", " ").split())
    assert EIGHT_GPUS in readme and NODES in readme


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_two_processes_train_as_one_four_rank_job(tmp_path, data_dir, reference):  # noqa: F811
    """The README's multi-node command on one machine: two torchrun launchers (2 nodes of 2 processes, a
    localhost rendezvous) are one 4-rank job, with the 1-process losses and evaluation."""
    cfg = tiny_config(tmp_path / "job", data_dir, **FIELDS, max_steps=3)
    flags = [f"--{k}={v}" for k, v in vars(cfg).items() if k != "model_overrides" and v is not None]
    launcher = NODES.replace("--nnodes=N", "--nnodes=2").replace("=8", "=2")
    launcher = launcher.replace("HOST0:29500", f"127.0.0.1:{free_port()}")
    command = [sys.executable, "-m", "torch.distributed.run", *launcher.split()[1:], str(REPO / "train.py"), *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launchers = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in launchers]
    assert [code for code, _ in results] == [0, 0], [err[-2000:] for _, err in results]
    assert json.loads((tmp_path / "job" / "log.jsonl").read_text().splitlines()[0])["world_size"] == 4
    assert_same_run(tmp_path / "job", reference, steps=(1, 2, 3))


@pytest.mark.slow
def test_the_whole_model_compiled_on_one_process_trains_as_eager(tmp_path, data_dir):  # noqa: F811
    """--compile=true alone compiles the whole model in place (nn.Module.compile): the same losses as eager to
    float32 rounding (inductor fuses the elementwise work in another order: 1e-5 relative), and a checkpoint with
    the eager parameter names, which an eager run resumes."""
    fields = dict(objective="nitp", max_steps=2, eval_batches=0, batch_size=4, decay_frac=0.0)
    eager = train.train(tiny_config(tmp_path / "eager", data_dir, **fields))
    compiled = train.train(tiny_config(tmp_path / "compiled", data_dir, **fields, compile=True))
    for a, b in zip(train_lines(tmp_path / "eager"), train_lines(tmp_path / "compiled")):
        for key in ("loss_ntp", "loss_nitp", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    assert compiled.model.state_dict().keys() == eager.model.state_dict().keys()
    resumed = train.train(tiny_config(tmp_path / "compiled", data_dir, **{**fields, "max_steps": 3}, resume=True))
    assert resumed.step == 3
