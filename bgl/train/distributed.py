"""Gradient averaging across workers for the solvers' `reduce` hook.

DDP's reducer only sees `.backward()`; the solvers use `torch.autograd.grad`, so every gradient
list a solver combines is averaged here explicitly: one flat all-reduce per call.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from bgl.solvers import Reduce, identity_reduce


def allreduce_mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Average a list of tensors over the default process group (one collective)."""
    if not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def default_reduce() -> Reduce:
    """`allreduce_mean` inside an initialised multi-worker group, else the identity."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return allreduce_mean
    return identity_reduce
