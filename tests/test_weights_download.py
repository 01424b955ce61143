"""Pretrained weights downloaded as torchvision does, from a loopback server only.

A stdlib HTTP server on 127.0.0.1 (port 0, in a thread) serves small generated checkpoints whose
file names carry their sha256 prefix, as torchvision's do. `BGL_WEIGHTS_URL` points bgl's
downloads at it; nothing here reaches the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import bgl.models.dsfd as dsfd
from bgl.models.dsfd import DSFD, load_vgg16_weights
from bgl.models.weights import (
    RandomInitWarning,
    WeightsDownloadError,
    find_weights_file,
    hub_checkpoint_dir,
)
from bgl.tasks.detect import DetectTask
from bgl.tasks.segment import SegmentTask

pytestmark = pytest.mark.usefixtures("single_thread")

TORCHVISION_BASE = "https://download.pytorch.org/models"


class Server:
    """Files by name; `truncate` names files sent with a Content-Length beyond their body."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append(name)
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if name in server.truncate:  # promise more than is sent, then hang up
                    self.send_header("Content-Length", str(len(body) + 4096))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models"

    def add(self, stem: str, state: dict[str, torch.Tensor], *, good_hash: bool = True) -> str:
        """Serve `state` as `<stem>-<sha256 prefix>.pth` (a wrong prefix unless `good_hash`)."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        body = buffer.getvalue()
        prefix = hashlib.sha256(body).hexdigest()[:8]
        if not good_hash:
            prefix = f"{(int(prefix, 16) + 1) % 16**8:08x}"
        name = f"{stem}-{prefix}.pth"
        self.files[name] = body
        return name


@pytest.fixture
def server(monkeypatch, tmp_path) -> Iterator[Server]:
    """A running loopback server; downloads allowed and pointed at it; an empty hub cache."""
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.delenv("BGL_OFFLINE", raising=False)
    monkeypatch.setenv("BGL_WEIGHTS_URL", srv.url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        thread.join(timeout=5)


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(4, 3, 3, 3, generator=g)
    return {"features.0.weight": weight, "features.0.bias": torch.zeros(4)}


def cache_contents() -> list[str]:
    folder = hub_checkpoint_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def find(name: str) -> Path:
    """`find_weights_file` as the models call it: torchvision's URL for the file name."""
    return find_weights_file((name,), what="test weights", url=f"{TORCHVISION_BASE}/{name}")


def test_download_into_the_hub_cache_then_reuse(server):
    name = server.add("tiny", tiny_state())
    path = find(name)
    assert path == hub_checkpoint_dir() / name and cache_contents() == [name]
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["features.0.weight"], tiny_state()["features.0.weight"])
    assert find(name) == path and server.requests == [name]  # cached: no second request


def test_model_weights_downloaded_and_loaded(server, monkeypatch):
    """DSFD's `load_vgg16_weights` end to end, its weights' URL patched to a served file."""
    torch.manual_seed(0)
    model = DSFD(width_mult=0.0625)
    state = {f"features.{k}": torch.randn_like(v) for k, v in model.vgg.state_dict().items()}
    name = server.add("vgg16tiny", state)
    monkeypatch.setattr(dsfd, "VGG16_WEIGHT_FILES", (name, "vgg16_reducedfc.pth"))
    patched = types.SimpleNamespace(url=f"{TORCHVISION_BASE}/{name}")
    monkeypatch.setattr(dsfd, "VGG16_WEIGHTS", patched)
    assert load_vgg16_weights(model) == str(hub_checkpoint_dir() / name)
    assert torch.equal(model.vgg[28].weight, state["features.28.weight"])
    assert server.requests == [name]


def test_hash_mismatch_is_refused_and_nothing_is_cached(server):
    name = server.add("tiny", tiny_state(), good_hash=False)
    with pytest.raises(WeightsDownloadError, match=rf"corrupt or incomplete.*{name[5:13]}"):
        find(name)
    assert server.requests == [name]
    assert cache_contents() == []  # neither the file nor a partial one


def test_offline_names_the_file_and_sends_no_request(server, monkeypatch):
    name = server.add("tiny", tiny_state())
    monkeypatch.setenv("BGL_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as info:
        find(name)
    message = str(info.value)
    assert name in message and str(hub_checkpoint_dir()) in message
    assert "BGL_OFFLINE" in message and f"{TORCHVISION_BASE}/{name}" in message  # how to place it
    assert server.requests == [] and cache_contents() == []


def test_no_network_is_the_offline_error(server, monkeypatch):
    with socket.socket() as probe:  # a loopback port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("BGL_WEIGHTS_URL", f"http://127.0.0.1:{port}/models")
    with pytest.raises(FileNotFoundError, match=r"tiny-0123abcd\.pth.*download from .* failed"):
        find("tiny-0123abcd.pth")
    assert cache_contents() == []


def test_interrupted_transfer_leaves_no_partial_file(server):
    name = server.add("tiny", tiny_state())
    server.truncate.add(name)
    with pytest.raises(WeightsDownloadError, match="corrupt or incomplete") as info:
        find(name)
    assert "nothing was saved" in str(info.value)
    assert server.requests == [name] and cache_contents() == []


def test_http_error_is_reported(server):
    with pytest.raises(WeightsDownloadError, match="HTTP 404"):
        find("absent-0123abcd.pth")
    assert cache_contents() == []


def test_full_size_backbones_at_random_are_warned_about_naming_the_option():
    assert "task.options.pretrained" in DetectTask(width_mult=1.0).random_init_warning()
    assert DetectTask(width_mult=0.125).random_init_warning() is None  # a test network
    message = SegmentTask(width=64).random_init_warning()
    assert "task.options.backbone_weights" in message and "ResNet-50" in message
    assert SegmentTask(width=4).random_init_warning() is None


def test_training_loop_warns_once_with_the_warning_class(tiny_config, caplog):
    from bgl.train.loop import Trainer

    cfg = tiny_config(task={"name": "detect", "options": {"width_mult": 1.0}})
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        Trainer(cfg)
    random_init = [w for w in caught if issubclass(w.category, RandomInitWarning)]
    assert len(random_init) == 1 and "task.options.pretrained" in str(random_init[0].message)
    assert any("task.options.pretrained" in r.getMessage() for r in caplog.records)
