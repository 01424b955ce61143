"""Endless, seeded, resumable streams of batches, sharded across workers.

Each epoch is a fresh permutation drawn from (seed, epoch); a worker takes every world-th item of
it, so ranks see disjoint samples and the union over ranks is the single-worker batch. The
stream's position is part of a checkpoint: a resumed run sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

Batch = dict[str, torch.Tensor]


class BatchStream:
    """`next(stream)` -> collated batch of `batch_size` samples for this rank."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if n < batch_size * world:
            raise ValueError(
                f"dataset of {n} samples is smaller than one global batch "
                f"({batch_size} x {world} workers)"
            )
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world, self.device = rank, world, torch.device(device)
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.dataset), generator=g)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        global_batch = self.batch_size * self.world
        if self.position + global_batch > len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        window = self._order[self.position : self.position + global_batch]
        self.position += global_batch
        samples = [self.dataset[int(i)] for i in window[self.rank :: self.world]]
        return to_device(default_collate(samples), self.device)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)


def sequential_batches(
    dataset: Dataset, batch_size: int, device: torch.device | str = "cpu"
) -> Iterator[Batch]:
    """One ordered pass over a dataset (evaluation)."""
    n = len(dataset)  # type: ignore[arg-type]
    for start in range(0, n, batch_size):
        samples = [dataset[i] for i in range(start, min(n, start + batch_size))]
        yield to_device(default_collate(samples), device)


def to_device(batch: Any, device: torch.device | str) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
