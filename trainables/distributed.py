"""The collectives the refinement loop needs across Ray Train's ranks, each a no-op on one worker.

Apart from refine.py because they know nothing of the method: refine() calls them by name
(`distributed.average_gradients`, ...) and reads as the algorithm, not as rank bookkeeping.
"""

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(this process's rank, the number of ranks); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_gradients(model: nn.Module, world: int) -> None:
    """All-reduce gradients by hand rather than wrapping the model in DDP: DDP's reducer does
    not support double backward, which the input-gradient penalty and IG-NORM need."""
    if world == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def gather(items: list, world: int) -> list:
    """Concatenate every rank's list, in rank order."""
    if world == 1:
        return items
    out: list = [None] * world
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def on_any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank when it is true on one, so all ranks stop at the same step."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t)
    return t.item() > 0


def mean_over_ranks(value: float, count: int, world: int) -> float:
    """The mean of every rank's `value`, each weighted by its `count`."""
    if world == 1:
        return value
    # NCCL reduces CUDA tensors only; gloo CPU ones.
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([value * count, float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t[0] / t[1]).item()
