"""Finding a ComfyUI checkout and the environment its processes run with."""

from __future__ import annotations

import os
from pathlib import Path

STANDINS = Path(__file__).parent / "standins"


def find_comfyui() -> tuple[Path | None, str]:
    """The checkout at $HEARTH_COMFYUI, else comfy-cli's default workspace; or None and why not."""
    env = os.environ.get("HEARTH_COMFYUI")
    candidate = Path(env).expanduser() if env else Path.home() / "comfy" / "ComfyUI"
    where = "$HEARTH_COMFYUI" if env else "comfy-cli's default workspace"
    if not (candidate / "main.py").is_file() or not (candidate / "comfy").is_dir():
        return None, f"no ComfyUI checkout at {candidate} ({where}); set HEARTH_COMFYUI to one"
    return candidate.resolve(), f"ComfyUI at {candidate}"


def comfy_env(checkout: Path, extra_path: list[Path] = (), **overrides: str | None) -> dict[str, str]:
    """Environment for a process that imports ComfyUI: the torchvision/torchaudio stand-ins come first.

    No build of either matches the CPU torch these tests use; ComfyUI imports both at start-up for models
    that SD1.5 never touches. `overrides` set (or, when None, remove) further variables.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(STANDINS), *map(str, extra_path), str(checkout)])
    env["PYTHONUNBUFFERED"] = "1"
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env
