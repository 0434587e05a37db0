"""A headless ComfyUI server on CPU and loopback, with the Hearth pack installed, driven over HTTP.

Layout of a server's folder (ComfyUI's --base-directory):
    custom_nodes/comfyui-hearth -> the repository (a symlink, as a user's git clone would be)
    models/, input/, output/, temp/, user/, comfy.db, comfy.log
Model files live elsewhere and reach ComfyUI through an extra_model_paths YAML, as users' shared folders do.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from . import REPO, process
from .checkout import comfy_env

PACK_NAME = "comfyui-hearth"


class ComfyError(RuntimeError):
    """ComfyUI did not start, refused a prompt, or a prompt failed; the message carries ComfyUI's words."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_extra_model_paths(path: Path, models: Path) -> Path:
    """An extra_model_paths YAML naming `models/checkpoints` and `models/loras` (JSON is valid YAML)."""
    doc = {"hearth_test": {"base_path": str(models), "checkpoints": "checkpoints", "loras": "loras"}}
    path.write_text(json.dumps(doc, indent=1))
    return path


@dataclass
class Run:
    """What one prompt produced: the /history entry, its images (PNG bytes), the websocket messages."""

    prompt_id: str
    history: dict
    images: list[bytes]
    messages: list[tuple[float, str, dict]] = field(default_factory=list)

    def events(self, kind: str) -> list[dict]:
        return [data for _, k, data in self.messages if k == kind]

    def hearth_loads(self) -> list[dict]:
        """What the Hearth nodes reported of their loads (`hearth.load`: kind, name, status, seconds, ...)."""
        return self.events("hearth.load")

    def progress_texts(self) -> dict[str, str]:
        """The last progress text ComfyUI sent for each node (what the frontend shows on it), by node id."""
        return {d["node"]: d["text"] for d in self.events("progress_text")}

    def pixels(self):
        """The prompt's one image as an RGB numpy array: PNG files differ in the graph they embed, pixels must not."""
        import numpy as np  # the test and bench extras' dependency, not the pack's
        from PIL import Image

        if len(self.images) != 1:
            raise ComfyError(f"prompt {self.prompt_id} saved {len(self.images)} images, not one: {self.history}")
        return np.asarray(Image.open(io.BytesIO(self.images[0])).convert("RGB"))

    def node_seconds(self) -> dict[str, float]:
        """Seconds from each node's `executing` message to the next one: its time as the client sees it."""
        starts = [(t, d.get("node")) for t, k, d in self.messages if k == "executing"]
        return {node: t1 - t0 for (t0, node), (t1, _) in pairwise(starts) if node is not None}


def _progress_text(frame: bytes) -> dict | None:
    """A binary frame of type 3 (PromptServer.send_progress_text: node id length, node id, text) as
    {"node", "text"}; None for any other frame (previews)."""
    if len(frame) < 8 or int.from_bytes(frame[:4], "big") != 3:
        return None
    n = int.from_bytes(frame[4:8], "big")
    return {"node": frame[8:8 + n].decode(), "text": frame[8 + n:].decode()}


class ComfyServer:
    """One ComfyUI process; use as a context manager, or start() and stop()."""

    def __init__(self, checkout: Path, base: Path, extra_model_paths: Path, env: dict[str, str | None],
                 extra_args: tuple[str, ...] = (), pack: Path | None = REPO):
        """`pack`: the folder linked as custom_nodes/comfyui-hearth (None: the pack comes some other way, e.g.
        a custom_nodes folder the extra_model_paths YAML names)."""
        self.checkout, self.base, self.extra_model_paths = checkout, base, extra_model_paths
        self.env_overrides, self.extra_args, self.pack = env, extra_args, pack
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex

    @classmethod
    def with_hearth(cls, checkout: Path, base: Path, extra_model_paths: Path, hearth_home: Path,
                    stock_loaders: bool = False, start_daemon: bool = False) -> ComfyServer:
        """ComfyUI with the pack, whose client uses the daemon of `hearth_home` (and is not disabled).

        `stock_loaders` sets Hearth.StockLoaders (HEARTH_STOCK_LOADERS): off by default here, so that the
        stock graphs a test renders in this process as its reference stay ComfyUI's own loads.
        `start_daemon` (HEARTH_START_DAEMON): off by default here, so that a test's stopped daemon stays
        stopped (the pack would start it again); the life-cycle tests turn it on.
        """
        return cls(checkout, base, extra_model_paths, {"HEARTH_HOME": str(hearth_home), "HEARTH_DISABLE": None,
                                                       "HEARTH_STOCK_LOADERS": "1" if stock_loaders else "0",
                                                       "HEARTH_START_DAEMON": "1" if start_daemon else "0"})

    @classmethod
    def stock(cls, checkout: Path, base: Path, extra_model_paths: Path) -> ComfyServer:
        """ComfyUI as it comes, the baseline: every custom node disabled, and the Hearth client too."""
        return cls(checkout, base, extra_model_paths, {"HEARTH_DISABLE": "1"},
                   extra_args=("--disable-all-custom-nodes",))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base / "comfy.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 90.0) -> ComfyServer:
        nodes = self.base / "custom_nodes"
        nodes.mkdir(parents=True, exist_ok=True)
        link = nodes / PACK_NAME
        if self.pack is not None and not link.is_symlink():
            link.symlink_to(self.pack, target_is_directory=True)
        self.port = free_port()
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(self.base),
               "--database-url", f"sqlite:///{self.base / 'comfy.db'}",
               "--extra-model-paths-config", str(self.extra_model_paths), *self.extra_args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.checkout, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         env=comfy_env(self.checkout, pack_importable=False,
                                                       **self.env_overrides))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.25)
        self.stop()
        raise ComfyError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        process.stop(self.proc)

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def get(self, path: str, timeout: float = 30) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict, timeout: float = 30) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise ComfyError(f"POST {path} answered {e.code}: {e.read().decode(errors='replace')}") from None

    def run(self, graph: dict, timeout: float = 600.0) -> Run:
        """Queue an API-format graph, follow it on the websocket until done; images of its SaveImage nodes."""
        return asyncio.run(self._run(graph, timeout))

    async def _run(self, graph: dict, timeout: float) -> Run:
        import aiohttp  # ComfyUI's own dependency; the websocket client of the standard library is none

        messages: list[tuple[float, str, dict]] = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}") as ws:
                prompt_id = self.post("/prompt", {"prompt": graph, "client_id": self.client_id})["prompt_id"]
                deadline = time.monotonic() + timeout
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ComfyError(f"prompt {prompt_id} not done in {timeout:.0f} s:\n{self.log()[-3000:]}")
                    msg = await ws.receive(timeout=left)
                    if msg.type == aiohttp.WSMsgType.BINARY:  # previews, and nodes' progress texts
                        text = _progress_text(msg.data)
                        if text is not None:
                            messages.append((time.perf_counter(), "progress_text", text))
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    doc = json.loads(msg.data)
                    data = doc.get("data", {})
                    messages.append((time.perf_counter(), doc["type"], data))
                    if data.get("prompt_id") != prompt_id:
                        continue  # on connect ComfyUI repeats its last node, and other prompts may run
                    if doc["type"] == "execution_error":
                        raise ComfyError(f"{data.get('node_type')}: {data.get('exception_message')}\n"
                                         f"{''.join(data.get('traceback', []))}")
                    if doc["type"] == "executing" and data.get("node") is None:
                        break
        history = self.get(f"/history/{prompt_id}")[prompt_id]
        return Run(prompt_id, history, self._images(history), messages)

    def finished(self, prompt_id: str, timeout: float = 600.0) -> Run:
        """A prompt someone else queued (a browser, as its own client), once /history has it done; no messages."""
        deadline = time.monotonic() + timeout
        while (history := self.get(f"/history/{prompt_id}").get(prompt_id)) is None or \
                not history.get("status", {}).get("completed"):
            if time.monotonic() > deadline:
                raise ComfyError(f"prompt {prompt_id} not done in {timeout:.0f} s:\n{self.log()[-3000:]}")
            time.sleep(0.25)
        return Run(prompt_id, history, self._images(history))

    def _images(self, history: dict) -> list[bytes]:
        out = []
        for node_out in history.get("outputs", {}).values():
            for img in node_out.get("images", []):
                query = urllib.parse.urlencode({k: img[k] for k in ("filename", "subfolder", "type")})
                with urllib.request.urlopen(f"{self.url}/view?{query}", timeout=30) as r:
                    out.append(r.read())
        return out
