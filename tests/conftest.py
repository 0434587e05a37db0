"""Fixtures for the foundation's tests: a real daemon process, real tmpfs, real subprocess clients.

Isolation: every daemon gets its own HEARTH_HOME and its own folder in /dev/shm (HEARTH_SHM_DIR), so the
segments a test makes live on the real tmpfs but never meet another run's (a daemon removes every
`hearth-<uid>-*` of the folder it manages that it does not know). Teardown stops the daemon and removes
that folder, nothing else.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import _TYPES, load_file, save_file

# The pack is imported the way ComfyUI imports it, from its folder, never pip-installed (harness/pack.py):
# `import harness` makes `comfyui_hearth` this checkout here and in every process the tests start.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
import harness  # noqa: E402,F401

PY = sys.executable
ST_DTYPES = {v: k for k, v in _TYPES.items()}  # torch dtype -> safetensors' name
UID = os.getuid()
_counter = itertools.count()


# ---- model files ----------------------------------------------------------------------------------

def sample_tensors(seed: int = 0, numel: int = 4096) -> dict[str, torch.Tensor]:
    """Random tensors of every dtype this torch and safetensors share, plus scalar and empty ones."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "model.f32": torch.randn(numel, generator=g),
        "model.f16": torch.randn(17, 5, generator=g).half(),
        "model.bf16": torch.randn(3, 43, generator=g).bfloat16(),
        "model.f64": torch.randn(3, 3, generator=g, dtype=torch.float64),
        "model.i64": torch.randint(-2**62, 2**62, (10,), generator=g),
        "model.i32": torch.randint(-2**31, 2**31 - 1, (7, 2), generator=g, dtype=torch.int32),
        "model.i16": torch.randint(-2**15, 2**15 - 1, (9,), generator=g, dtype=torch.int16),
        "model.i8": torch.randint(-128, 127, (11,), generator=g, dtype=torch.int8),
        "model.u8": torch.randint(0, 255, (2, 2, 3), generator=g, dtype=torch.uint8),
        "model.bool": torch.randint(0, 2, (13,), generator=g).bool(),
        "model.c64": torch.randn(5, generator=g, dtype=torch.complex64),
        "model.scalar": torch.tensor(seed + 0.5),
        "model.empty": torch.zeros(0, 4),
        "model.empty_i8": torch.zeros(3, 0, dtype=torch.int8),
    }
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"):
        if hasattr(torch, name):
            t[f"model.{name}"] = torch.randn(33, generator=g).to(getattr(torch, name))
    for name in ("uint16", "uint32", "uint64"):
        if hasattr(torch, name):
            t[f"model.{name}"] = torch.randint(0, 2**15, (6,), generator=g).to(getattr(torch, name))
    return t


def make_model(path: Path, seed: int = 0, numel: int = 4096, tensors: dict | None = None,
               metadata: dict | None = None) -> Path:
    """Write a small random .safetensors file (several dtypes) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sample_tensors(seed, numel) if tensors is None else tensors, str(path), metadata=metadata)
    return path


def make_sparse_model(path: Path, big_bytes: int, seed: int = 0) -> Path:
    """A large file made fast: a few random tensors and one big all-zero U8 tensor left as a file hole."""
    small = sample_tensors(seed, 256)
    header_entries, blobs, pos = {}, [], 0
    for name, t in small.items():
        data = raw(t)
        header_entries[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                                "data_offsets": [pos, pos + len(data)]}
        blobs.append(data)
        pos += len(data)
    header_entries["model.big"] = {"dtype": "U8", "shape": [big_bytes], "data_offsets": [pos, pos + big_bytes]}
    head = json.dumps(header_entries).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))
        f.truncate(8 + len(head) + pos + big_bytes)
    return Path(path)


def reference(path) -> dict[str, torch.Tensor]:
    """The stock load, copied: load_file maps the file, so its tensors would follow a later rewrite."""
    return {k: v.clone() for k, v in load_file(str(path)).items()}


def raw(t: torch.Tensor) -> bytes:
    """The tensor's bytes, whatever its dtype (bf16 and fp8 have no numpy twin)."""
    if t.numel() == 0:
        return b""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same_tensors(got: dict, want: dict) -> None:
    """Byte-for-byte equality: names, dtypes, shapes and bytes."""
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        assert torch.equal(u8(got[k]), u8(want[k])), k


def u8(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a uint8 tensor (compared bitwise: NaNs and -0.0 included)."""
    return t.contiguous().reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


def fd_targets(pid: int) -> list[str]:
    """What a process's descriptors point at (files, "socket:[...]", "... (deleted)"), as /proc shows them."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            pass
    return out


def set_mtime_ns(path: Path, mtime_ns: int) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, mtime_ns))


# ---- the daemon -----------------------------------------------------------------------------------

class Daemon:
    """One real `hearth daemon --headless` process with its own HEARTH_HOME, models folder and shm folder."""

    ARGS = ("daemon", "--headless")  # the tray tests run it with a tray

    def __init__(self, root: Path, shm: Path | None = None, env: dict | None = None, cwd: Path | None = None):
        self.root = root
        self.cwd = cwd  # the daemon's working folder (None: the test's)
        self.home = root / "home"
        self.models = root / "models"
        self.models.mkdir(parents=True, exist_ok=True)
        self.shm = shm or Path("/dev/shm") / f"pytest-hearth-{os.getpid()}-{next(_counter)}"
        self.shm.mkdir(mode=0o700, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
        self.env.update({"HEARTH_HOME": str(self.home), "HEARTH_PORT": "0",
                         "HEARTH_MODEL_DIRS": str(self.models), "HEARTH_SHM_DIR": str(self.shm),
                         "PYTHONUNBUFFERED": "1"})
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.clients: list[subprocess.Popen] = []

    # life cycle

    def start(self, timeout: float = 20.0) -> Daemon:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = self.home / "daemon.json"
        log = open(self.home / "test-daemon.log", "ab")
        self.proc = subprocess.Popen([PY, "-m", "comfyui_hearth.cli", *self.ARGS], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.cwd)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                doc = json.loads(info.read_text())
                if doc.get("pid") == self.proc.pid:
                    self.port = doc["port"]
                    return self
            except (FileNotFoundError, ValueError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"daemon did not start:\n{self.log()}")

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def log(self) -> str:
        try:
            return (self.home / "test-daemon.log").read_text()
        except FileNotFoundError:
            return ""

    @property
    def token(self) -> str:
        return (self.home / "token").read_text().strip()

    # talking to it

    def api(self, method: str, path: str, body=None, token: str | None = "default", host: str | None = None,
            raw_body: bytes | None = None, timeout: float = 30.0) -> tuple[int, dict]:
        """One raw HTTP request; returns (status, JSON answer)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        if host is not None:
            headers["Host"] = host
        data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        try:
            doc = json.loads(payload) if payload else {}
        except ValueError:
            doc = {"_text": payload.decode(errors="replace")}
        return resp.status, doc

    def ok(self, method: str, path: str, body=None) -> dict:
        status, doc = self.api(method, path, body)
        assert status == 200, (status, doc)
        return doc

    def status(self) -> dict:
        return self.ok("GET", "/v1/status")

    def acquire(self, path) -> dict:
        return self.ok("POST", "/v1/acquire", {"path": str(path)})

    def segment(self, path) -> dict | None:
        real = os.path.realpath(path)
        for s in self.status()["segments"]:
            if s["path"] == real:
                return s
        return None

    @property
    def prefix(self) -> str:
        """`hearth-<uid>-<hash of HEARTH_HOME>-`, as daemon/segments.py names this daemon's segments."""
        home = os.path.realpath(self.home)
        return f"hearth-{UID}-{hashlib.blake2b(home.encode(), digest_size=3).hexdigest()}-"

    def seg_name(self, key: str) -> str:
        return self.prefix + key

    def shm_names(self) -> list[str]:
        return sorted(os.listdir(self.shm))

    def final_names(self) -> list[str]:
        return [n for n in self.shm_names() if n.startswith(f"hearth-{UID}-")]

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def io(self) -> dict[str, int]:
        """The daemon process's I/O counters (rchar counts every byte read, sendfile included)."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/io").read_text().splitlines():
            k, v = line.split(":")
            out[k] = int(v)
        return out

    # processes of the same user and environment

    def cli(self, *args: str, timeout: float = 60.0, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([PY, "-m", "comfyui_hearth.cli", *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def client(self, code: str, env: dict | None = None) -> Client:
        """Start a subprocess running `code` after CLIENT_PRELUDE, with the daemon's environment."""
        proc = subprocess.Popen([PY, "-c", CLIENT_PRELUDE + textwrap.dedent(code)], env={**self.env, **(env or {})},
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.clients.append(proc)
        return Client(proc)

    def run_client(self, code: str, env: dict | None = None, timeout: float = 60.0) -> tuple[int, list, str]:
        """Run a client to its end: (exit code, JSON lines it printed, its stderr)."""
        c = self.client(code, env)
        return c.finish(timeout)

    def cleanup(self) -> None:
        from comfyui_hearth.client.spawn import lock_holder, wait_stopped

        for c in self.clients:
            if c.poll() is None:
                c.kill()
                c.wait()
        self.stop()
        # A daemon this one's HEARTH_HOME got from elsewhere (a client or the CLI started it, detached)
        if (pid := lock_holder(self.env)) is not None and pid > 0:
            os.kill(pid, signal.SIGTERM)
            wait_stopped(self.env, 15)
        shutil.rmtree(self.shm, ignore_errors=True)


CLIENT_PRELUDE = """\
import gc, json, os, sys, time
import torch
import safetensors.torch
from comfyui_hearth.client import load, load_state_dict
def say(**kw):
    print(json.dumps(kw), flush=True)
def u8(t):
    return t.contiguous().reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
def same(a, b):
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                    and torch.equal(u8(a[k]), u8(b[k])) for k in b)
"""


class Client:
    """A subprocess client: read the JSON lines it says, tell it lines on stdin, collect its end."""

    def __init__(self, proc: subprocess.Popen):
        import queue
        import threading

        self.proc = proc
        self.pid = proc.pid
        # A thread reads stdout line by line: select() on the pipe would miss lines already buffered.
        self._lines: queue.Queue = queue.Queue()
        self._out: list[str] = []

        def pump() -> None:
            for line in proc.stdout:
                self._out.append(line)
                self._lines.put(line)
            self._lines.put(None)

        self._reader = threading.Thread(target=pump, daemon=True)
        self._reader.start()

    def read(self, timeout: float = 60.0) -> dict:
        import queue

        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"client {self.pid} said nothing within {timeout} s") from None
        if line is None:
            self.proc.wait()
            raise AssertionError(f"client {self.pid} ended ({self.proc.returncode}): {self.proc.stderr.read()}")
        return json.loads(line)

    def tell(self, line: str = "go") -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60.0) -> tuple[int, list, str]:
        """Close its stdin, wait for its end: (exit code, every JSON line it said, its stderr)."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout)  # (clients write little to stderr: the pipe cannot fill and block them)
        err = self.proc.stderr.read()
        self._reader.join(timeout)
        return self.proc.returncode, [json.loads(x) for x in self._out if x.startswith("{")], err


@pytest.fixture
def make_daemon(tmp_path):
    """Factory: make_daemon(env={...}, start=True) -> Daemon; all are stopped and cleaned at the end."""
    made: list[Daemon] = []

    def factory(env: dict | None = None, start: bool = True, root: Path | None = None,
                shm: Path | None = None, cwd: Path | None = None) -> Daemon:
        d = Daemon(root or tmp_path / f"d{len(made)}", shm=shm, env=env, cwd=cwd)
        made.append(d)
        return d.start() if start else d

    yield factory
    for d in made:
        d.cleanup()


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon()


@pytest.fixture
def in_process(daemon, monkeypatch):
    """Point this test process's own client at `daemon` (the client reads its environment per call)."""
    for k in [k for k in os.environ if k.startswith("HEARTH_")]:
        monkeypatch.delenv(k)
    for k, v in daemon.env.items():
        if k.startswith("HEARTH_"):
            monkeypatch.setenv(k, v)
    import importlib

    # (`import comfyui_hearth.client.load` would name the function `load`, not the module)
    cl = importlib.import_module("comfyui_hearth.client.load")
    monkeypatch.setattr(cl, "_said", set())  # "once per reason per process": start each test afresh
    return daemon


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory):
    """One daemon for a module's tests that change nothing lasting (refusals, reads): saves the starts."""
    d = Daemon(tmp_path_factory.mktemp("shared"))
    d.start()
    yield d
    d.cleanup()


@pytest.fixture
def in_process_env(monkeypatch):
    """in_process_env(daemon): a context in which this process's own client talks to `daemon`."""
    import contextlib
    import importlib

    cl = importlib.import_module("comfyui_hearth.client.load")

    @contextlib.contextmanager
    def use(daemon: Daemon):
        with monkeypatch.context() as m:
            for k in [k for k in os.environ if k.startswith("HEARTH_")]:
                m.delenv(k)
            for k, v in daemon.env.items():
                if k.startswith("HEARTH_"):
                    m.setenv(k, v)
            m.setattr(cl, "_said", set())
            yield daemon

    return use
