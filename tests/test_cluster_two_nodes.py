"""A real two-node Ray cluster on this machine: `bgl study run --address` spreads trials over it.

Both nodes are started with `ray start` (the head on a free port, the second node joining it),
each with 1 CPU and its own short temp dir, token authentication ON. Two concurrent trials need
0.01 + 0.9 CPU each, so they cannot share a node: the study only finishes if both nodes work.

Token authentication, as Ray 2.60 does it (checked in ray/scripts/scripts.py and
ray/_private/worker.py):
- `ray start --head` turns token mode on by itself only when a token already exists
  (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); a joining `ray start --address`
  and a driver calling `ray.init(address="host:port")` never do, so RAY_AUTH_MODE=token is
  exported to all three here. All read the same token: ~/.ray/auth_token unless the caller's
  environment sets RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH (then everything uses that one).
- A client without token mode, or with a wrong token, is refused (checked below).

Speed on 2 shared cores: a raylet starts at most min(cores, --num-cpus) = 1 worker process at a
time, and one trial needs about eight actor processes (trial, Train controller, Train worker and
helpers), so RAY_worker_maximum_startup_concurrency=4 is given to both nodes (a RayConfig
override of the raylet's --maximum_startup_concurrency); on a real cluster nodes have more CPUs.

Only the processes this test started are stopped (by session id), never `ray stop`, which
would kill every Ray instance of this user on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from bgl.cli import main
from tests.conftest import TINY_STUDY_BASE as BASE

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
if not Path(RAY).exists():  # not a virtualenv layout: fall back to PATH
    RAY = shutil.which("ray") or "ray"


# one GCS connection attempt instead of 20 (one a second) for the clients that must be refused
ONE_TRY = {"RAY_NUM_REDIS_GET_RETRIES": "1", "RAY_gcs_server_port_wait_time_s": "1"}

NODES_CHECK = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.time() + float(sys.argv[2])
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= 2 or time.time() > deadline:
        break
    time.sleep(0.5)
print(len(alive), sum(n["Resources"].get("CPU", 0) for n in alive))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))  # the GCS listens on all interfaces
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Processes in session `sid` (a `ray start --block` started with a new session and every
    process it spawned: GCS, raylet, agents, workers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


def _stop_node(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the node's `ray start --block`, then SIGKILL whatever of its session is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and _session_pids(proc.pid):
        time.sleep(0.2)
    for pid in _session_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _wait_started(proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    pytest.fail(f"ray start did not come up ({log}):\n{log.read_text(errors='replace')[-3000:]}")


def _ensure_token(env: dict[str, str]) -> None:
    if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH"):
        return
    if not (Path.home() / ".ray" / "auth_token").is_file():
        # creates ~/.ray/auth_token only when missing (what a local ray.init() would do)
        subprocess.run(
            [RAY, "get-auth-token", "--generate"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


@pytest.fixture
def two_nodes(tmp_path):
    """(address, [head, worker temp dir], env) of a 2-node, 2-CPU cluster; stopped after."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp_dirs = [Path(f"/tmp/bglc{port}h"), Path(f"/tmp/bglc{port}w")]  # short: socket paths
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "token"
    _ensure_token(env)
    node_env = dict(env, RAY_worker_maximum_startup_concurrency="4")
    common = ["--num-cpus=1", "--disable-usage-stats", "--block"]
    procs: list[subprocess.Popen] = []
    logs: list = []

    def start(args: list[str], log: Path) -> subprocess.Popen:
        out = open(log, "w")  # closed at teardown
        logs.append(out)
        proc = subprocess.Popen(
            [RAY, "start", *args, *common],
            env=node_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    try:
        head_log, worker_log = tmp_path / "head.log", tmp_path / "worker.log"
        head = start(
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                f"--temp-dir={temp_dirs[0]}",
                "--include-dashboard=false",
            ],
            head_log,
        )
        _wait_started(head, head_log, 120)
        worker = start([f"--address={address}", f"--temp-dir={temp_dirs[1]}"], worker_log)
        _wait_started(worker, worker_log, 120)
        check = subprocess.run(
            [sys.executable, "-c", NODES_CHECK, address, "60"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert check.returncode == 0, check.stderr[-3000:]
        nodes, cpus = check.stdout.split()[-2:]
        assert (int(nodes), float(cpus)) == (2, 2.0), check.stdout
        yield address, temp_dirs, env
    finally:
        # the joining node drains in a second or two; the head would wait 30 s, so it gets a
        # moment and is then killed (like `ray stop --force`, but only its own processes)
        for proc, grace in zip(reversed(procs), (3.0, 1.0)[: len(procs)]):
            _stop_node(proc, grace)
        for out in logs:
            out.close()
        for d in temp_dirs:
            shutil.rmtree(d, ignore_errors=True)


def _actors_on(temp_dir: Path) -> set[str]:
    """Actor class names whose worker logs ended up in this node's temp dir."""
    names = set()
    for out in (temp_dir / "session_latest" / "logs").glob("worker-*.out"):
        for line in out.read_text(errors="replace").splitlines()[:5]:
            if line.startswith(":actor_name:"):
                names.add(line.split(":", 2)[2])
    return names


def test_study_runs_across_two_ray_nodes(two_nodes, tmp_path, monkeypatch):
    address, temp_dirs, env = two_nodes
    start = time.perf_counter()

    # auth is enforced: a client without token mode, or with a wrong token, is refused
    bad_clients = [
        subprocess.Popen(
            [sys.executable, "-c", NODES_CHECK, address, "0"],
            env={**env, **ONE_TRY, **bad},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for bad in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": "not-the-cluster-token"})
    ]
    for client in bad_clients:
        _, stderr = client.communicate(timeout=120)
        assert client.returncode != 0 and "AuthenticationError" in stderr, client.args

    study = {
        "name": "two_nodes",
        "output_dir": str(tmp_path / "results"),
        "base": BASE,
        "search": {
            "num_samples": 2,
            "metric": "psnr",
            "mode": "max",
            "sampler": "random",
            "solvers": ["naive"],
        },
        # a trial = 0.01 CPU (driver) + 0.9 CPU (its one worker): two cannot share a 1-CPU node
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 0.9, "max_concurrent_trials": 2},
        "logging": {"tensorboard": False},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # an explicit address never turns it on
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["study", "run", str(path), "--address", address, "--no-live"]) == 0

    trials = sorted((tmp_path / "results" / "two_nodes" / "trials").glob("*.parquet"))
    rows = [pq.read_table(p).to_pylist()[0] for p in trials]
    assert len(rows) == 2
    assert {r["status"] for r in rows} == {"completed"}
    assert all(r["workers"] == 1 and r["psnr"] > 0 for r in rows)
    # each node ran a Train worker: the study really used both
    for d in temp_dirs:
        assert "RayTrainWorker" in _actors_on(d), (d, _actors_on(d))
    print(f"two-node study: {time.perf_counter() - start:.1f} s")
