"""A Hearth daemon of its own for a test or benchmark run: private HEARTH_HOME, any free port."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.request
from pathlib import Path

from . import process


class Daemon:
    """`hearth daemon --headless` with HEARTH_HOME=home, allowed to serve the files under `model_dirs`.

    `shm_dir` (a folder on a tmpfs, HEARTH_SHM_DIR) keeps this daemon's segments apart from any other's.
    """

    def __init__(self, home: Path, model_dirs: list[Path], shm_dir: Path | None = None):
        self.home = home
        self.shm_dir = shm_dir or Path(os.environ.get("HEARTH_SHM_DIR", "/dev/shm"))
        self.env = {**os.environ, "HEARTH_HOME": str(home), "HEARTH_PORT": "0",
                    "HEARTH_MODEL_DIRS": os.pathsep.join(map(str, model_dirs)),
                    "HEARTH_SHM_DIR": str(self.shm_dir)}
        self.env.pop("HEARTH_DISABLE", None)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        from comfyui_hearth.client.spawn import start_daemon

        self.shm_dir.mkdir(parents=True, exist_ok=True)
        self.proc = start_daemon(self.env, timeout=30.0, headless=True)
        return self

    def stop(self) -> None:
        process.stop(self.proc)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        info = json.loads((self.home / "daemon.json").read_text())
        token = (self.home / "token").read_text().strip()
        req = urllib.request.Request(f"http://127.0.0.1:{info['port']}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def status(self) -> dict:
        return self.api("GET", "/v1/status")

    def segment(self, source: Path) -> Path:
        """The file in the daemon's tmpfs folder that holds `source` (named hearth-<uid>-...-<key>)."""
        real = os.path.realpath(source)
        for seg in self.status()["segments"]:
            if os.path.realpath(seg["path"]) == real and seg["state"] == "ready":
                if "segment" in seg:
                    return Path(seg["segment"])
                [path] = self.shm_dir.glob(f"hearth-{os.getuid()}-*{seg['key']}")
                return path
        raise LookupError(f"no ready segment for {source}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
