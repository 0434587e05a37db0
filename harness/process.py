"""Stopping the child processes the harness starts (daemons and ComfyUI servers)."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen | None, grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `grace_s`; nothing if it already ended."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
