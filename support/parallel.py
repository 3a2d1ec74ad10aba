"""support/parallel.py: how train.py spreads one model over its processes, `--data_parallel=auto|ddp|fsdp`.

* One process: neither wrapper. The model is the plain module; on CUDA its forward runs under bf16 autocast.
* ddp: PyTorch's DistributedDataParallel through its composable `replicate`, which works in place like
  `fully_shard` (the module keeps its class, its parameter names and its state dict). Every rank holds the whole
  model, gradients and AdamW state; one bucketed all-reduce, overlapped with the backward, sums the gradients on
  the step's last micro-batch only (`sync_gradients`). bf16 autocast on CUDA.
* fsdp: FSDP2 (`fully_shard`): each block a unit (compiled first with --compile), then the model's root (a tied
  embedding stays one parameter), then the projector. On CUDA: bf16 compute from fp32 master weights, fp32
  gradient reduction, a block's weights freed after its forward; on CPU they stay gathered until its backward.
* auto: DDP when the memory plan of the replicated state (support/memory.py at world size 1: weights, gradients,
  AdamW's moments and one micro-batch's activations) fits the device, FSDP2 otherwise; train.py prints which and
  why at startup. On CPU, where memory is not planned, DDP.

Gradients are SUMMED in every mode (each micro-batch's loss is already divided by the step's global counts), so a
step is the same for any world size and any mode, up to the float order of the sums. Checkpoints are DCP state
dicts of the unwrapped names, loadable across the three modes and any world size (support/checkpoint.py).
--compile: the whole model on one process; per block under DDP and FSDP2, whose hooks sit on the root module.
"""

import contextlib

import torch
import torch.distributed as dist
from torch.distributed._composable.replicate import replicate
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

MODES = ("auto", "ddp", "fsdp")     # --data_parallel's values; one process uses "none" whatever it says


def choose(requested: str, world: int, replicated_fits: bool) -> tuple[str, str]:
    """(mode, why): "none" alone, the requested wrapper, or auto's pick by the replicated state's memory plan."""
    if world == 1:
        return "none", "one process: no wrapper"
    if requested != "auto":
        return requested, f"--data_parallel={requested}"
    if replicated_fits:
        return "ddp", "auto: the replicated weights, gradients and AdamW state fit every device"
    return "fsdp", "auto: the replicated state does not fit one device, so it is sharded"


def apply(model, projector, mode: str, rt, activation_checkpointing=False, compile_model=False) -> None:
    """Wrap the model and the projector in place for `mode` ("none", "ddp" or "fsdp")."""
    for block in model.blocks:
        block.activation_checkpointing = activation_checkpointing
        if compile_model and mode != "none":
            block.compile()  # in place: parameter names (and checkpoints) stay those of the eager model
    if compile_model and mode == "none":
        model.compile()
    trained = [m for m in (model, projector) if m is not None and any(True for _ in m.parameters())]
    if mode == "ddp":
        for module in trained:
            # MoE experts a micro-batch never routes to get no gradient: DDP must then look for unused ones
            replicate(module, device_id=rt.device, forward_sync_buffers=False, gradient_as_bucket_view=True,
                      find_unused_parameters=bool(getattr(model.config, "n_routed_experts", 0)))
            module.register_comm_hook(None, sum_all_reduce)
    elif mode == "fsdp":
        shard(model, projector, rt)


def sum_all_reduce(state, bucket):
    """DDP's communication hook for a plain SUM of a gradient bucket (its default divides by the world size)."""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def shard(model, projector, rt) -> None:
    """FSDP2 over all processes, gradients summed (set_gradient_divide_factor(1) and a plain SUM for gloo)."""
    mesh = init_device_mesh(rt.device.type, (rt.world,))
    cuda = rt.device.type == "cuda"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if cuda else None, reduce_dtype=torch.float32)
    units = [fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=cuda) for block in model.blocks]
    units.append(fully_shard(model, mesh=mesh, mp_policy=policy))
    if projector is not None and any(True for _ in projector.parameters()):  # "none" has nothing to shard
        units.append(fully_shard(projector, mesh=mesh, mp_policy=policy))
    for unit in units:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum


def sync_gradients(modules, mode: str, enabled: bool) -> None:
    """DDP: reduce the gradients in the coming backward (the step's last micro-batch) or keep accumulating them
    locally. FSDP2 reduce-scatters every micro-batch (its sharded gradients need it); alone there is nothing to do."""
    if mode == "ddp":
        for module in modules:
            if module is not None and any(True for _ in module.parameters()):
                module.set_requires_gradient_sync(enabled)


def autocast(mode: str, device):
    """bf16 autocast on CUDA where no FSDP2 policy casts the weights (one process, DDP); a no-op elsewhere."""
    if device.type == "cuda" and mode != "fsdp":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
