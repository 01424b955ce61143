"""Two gloo workers, each on half a batch, give the one-worker hypergradient of the whole batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bgl.solvers import SOLVER_NAMES, hypergradient
from bgl.train.distributed import allreduce_mean, default_reduce
from tests.bilevel_problems import mlp_problem

AID = {"iterations": 3, "damping": 0.1}


def _problem():
    return mlp_problem(upper_hidden=4)


def _shard(batch, rank, world):
    return tuple(t.chunk(world)[rank] for t in batch)


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        problem, train, val = _problem()
        assert default_reduce() is allreduce_mean
        results = {}
        for solver in SOLVER_NAMES:
            results[solver] = hypergradient(
                solver,
                problem,
                _shard(train, rank, world),
                _shard(val, rank, world),
                lower_lr=0.3,
                delta=1e-3,
                **AID,
                reduce=default_reduce(),
            )
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


def test_two_workers_equal_one_worker_on_concatenated_batch(tmp_path):
    out = tmp_path / "two.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    problem, train, val = _problem()
    assert set(two) == set(SOLVER_NAMES)
    for solver in SOLVER_NAMES:
        one = hypergradient(solver, problem, train, val, lower_lr=0.3, delta=1e-3, **AID)
        for a, b in zip(two[solver], one, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # sanity: a single shard alone gives a different answer, so the reduce mattered
    alone = hypergradient("ibgl", problem, _shard(train, 0, 2), _shard(val, 0, 2), lower_lr=0.3)
    assert not torch.allclose(alone[0], two["ibgl"][0])


def test_default_reduce_is_identity_without_a_group():
    ts = [torch.ones(2)]
    assert default_reduce()(ts) is ts
