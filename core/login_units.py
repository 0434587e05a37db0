"""Start at login: a systemd user unit and an XDG autostart entry that start the user's daemon.

Both are written, because desktops differ in what they run at login: systemd starts the unit with the user
manager (and, with lingering, at boot, with no desktop at all); desktops without systemd run the autostart
entry. Where both run, the second daemon sees the first one's lock and exits 0 (daemon/main.py). A daemon
started by the unit has no DISPLAY, but it finds the session bus at $XDG_RUNTIME_DIR/bus, so its tray icon
still appears once the desktop's panel is up (daemon/tray.py).

The unit raises the memory-lock limit (LimitMEMLOCK=infinity): pinned, page-locked host memory for the GPU
needs it (issue 19). systemd sets the closest value the user manager's own hard limit allows when that is
lower, so the unit never fails on it. The HEARTH_* variables that choose which daemon it is (its home, its
shared-memory folder, port, model folders, budget) are carried over from the environment `on` ran in, so
the login daemon is the one this environment's commands talk to.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from .command import launcher_argv

UNIT = "comfyui-hearth.service"
DESKTOP = "comfyui-hearth.desktop"
CARRIED_ENV = ("HEARTH_HOME", "HEARTH_SHM_DIR", "HEARTH_PORT", "HEARTH_MODEL_DIRS", "HEARTH_BUDGET")
HEADER = "Written by `hearth autostart on` (comfyui-hearth); `hearth autostart off` removes it."


def daemon_argv() -> list[str]:
    """The command line that starts a daemon at login: this Python, this pack's launcher (hearth.py), which
    imports the pack from its own folder, so no pip install and no PYTHONPATH is needed."""
    return launcher_argv("daemon")


def _config_home(env: Mapping[str, str]) -> Path:
    return Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME") or Path.home()) / ".config")


def unit_path(env: Mapping[str, str] | None = None) -> Path:
    return _config_home(os.environ if env is None else env) / "systemd" / "user" / UNIT


def wants_path(env: Mapping[str, str] | None = None) -> Path:
    """The link `systemctl --user enable` would make: the unit starts with the user's default target."""
    return _config_home(os.environ if env is None else env) / "systemd" / "user" / "default.target.wants" / UNIT


def desktop_path(env: Mapping[str, str] | None = None) -> Path:
    return _config_home(os.environ if env is None else env) / "autostart" / DESKTOP


# ---- the files ------------------------------------------------------------------------------------

_SYSTEMD_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
_DESKTOP_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def _systemd_word(word: str, dollar: bool) -> str:
    """One word of a unit's command or Environment= line (systemd.syntax: quotes, C escapes; `%` starts a
    specifier, and in ExecStart `$` an environment variable)."""
    word = word.replace("%", "%%")
    if dollar:
        word = word.replace("$", "$$")
    if _SYSTEMD_PLAIN.fullmatch(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _desktop_word(word: str) -> str:
    """One argument of a desktop entry's Exec (Desktop Entry spec: reserved characters need double quotes,
    inside which " ` $ \\ take a backslash; `%` starts a field code)."""
    if any(c in _DESKTOP_RESERVED for c in word):
        word = '"' + "".join("\\" + c if c in '"`$\\' else c for c in word) + '"'
    return word.replace("%", "%%")


def _carried(env: Mapping[str, str]) -> dict[str, str]:
    return {k: env[k] for k in CARRIED_ENV if env.get(k)}


def unit_text(argv: list[str], env: Mapping[str, str]) -> str:
    lines = [f"# {HEADER}", "[Unit]", "Description=Hearth: ComfyUI model weights kept warm in shared memory",
             "Documentation=https://github.com/hearth-comfy/comfyui-hearth#readme",
             # a daemon that cannot start (a token file others can read, say) must not retry forever
             "StartLimitIntervalSec=60", "StartLimitBurst=3", "", "[Service]", "Type=simple",
             "ExecStart=" + " ".join(_systemd_word(a, dollar=True) for a in argv)]
    lines += [f"Environment={_systemd_word(f'{k}={v}', dollar=False)}" for k, v in _carried(env).items()]
    lines += ["LimitMEMLOCK=infinity", "Restart=on-failure", "RestartSec=5", "", "[Install]",
              "WantedBy=default.target", ""]
    return "\n".join(lines)


def desktop_text(argv: list[str], env: Mapping[str, str]) -> str:
    carried = [f"{k}={v}" for k, v in _carried(env).items()]
    command = (["env", *carried] if carried else []) + argv
    # The Exec value is also a desktop-file string, where a backslash is written twice.
    exec_line = " ".join(_desktop_word(a) for a in command).replace("\\", "\\\\")
    return "\n".join([f"# {HEADER}", "[Desktop Entry]", "Type=Application", "Name=Hearth",
                      "Comment=Keeps ComfyUI model weights warm in shared memory", f"Exec={exec_line}",
                      "Terminal=false", "NoDisplay=true", "X-GNOME-Autostart-enabled=true", ""])


# ---- on, off, state -------------------------------------------------------------------------------

def state(env: Mapping[str, str] | None = None) -> dict:
    """Which of the login files exist: {"enabled", "unit", "desktop"} (paths, or None where absent)."""
    env = os.environ if env is None else env
    unit = unit_path(env) if wants_path(env).exists() and unit_path(env).exists() else None
    desktop = desktop_path(env) if desktop_path(env).exists() else None
    return {"enabled": bool(unit or desktop), "unit": unit and str(unit), "desktop": desktop and str(desktop)}


def enable(env: Mapping[str, str] | None = None) -> list[str]:
    """Write (or rewrite: the pack or Python may have moved) both files; lines saying what was done."""
    env = os.environ if env is None else env
    argv = daemon_argv()
    unit, wants, desktop = unit_path(env), wants_path(env), desktop_path(env)
    _write(unit, unit_text(argv, env))
    wants.parent.mkdir(parents=True, exist_ok=True)
    if wants.is_symlink() or wants.exists():
        wants.unlink()
    wants.symlink_to(unit)
    _write(desktop, desktop_text(argv, env))
    said = [f"wrote {_home_short(unit, env)} (systemd user unit, enabled for login; LimitMEMLOCK=infinity "
            f"for pinned GPU memory)",
            f"wrote {_home_short(desktop, env)} (XDG autostart entry, for desktops without systemd)"]
    if carried := _carried(env):
        said.append(f"both keep {', '.join(carried)} as set here")
    said.append(_reload(env))
    said.append("the daemon starts at your next login: " + " ".join(argv))
    return said


def disable(env: Mapping[str, str] | None = None) -> list[str]:
    """Remove both files (a running daemon keeps running); lines saying what was done."""
    env = os.environ if env is None else env
    removed = []
    for path in (wants_path(env), unit_path(env), desktop_path(env)):
        if path.is_symlink() or path.exists():
            path.unlink()
            removed.append(path)
    if not removed:
        return ["start at login was off: nothing to remove"]
    said = [f"removed {_home_short(p, env)}" for p in removed if p != wants_path(env)]
    said.append(_reload(env))
    said.append("the daemon no longer starts at login (one running now keeps running)")
    return said


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _reload(env: Mapping[str, str]) -> str:
    """Tell a running systemd user manager to read its units again; where none is reachable, say so."""
    if shutil.which("systemctl") is None:
        return "systemd is not installed here: the autostart entry is what starts it"
    try:
        # systemctl from PATH, as the user's shell would find it (shutil.which above)
        done = subprocess.run(["systemctl", "--user", "daemon-reload"],  # noqa: S607
                              env=dict(env), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"systemctl --user daemon-reload failed ({e}): systemd reads the unit at your next login"
    if done.returncode != 0:
        return "no systemd user manager is reachable now: it reads the unit at your next login"
    return "systemd's user manager reloaded its units"


def _home_short(path: Path, env: Mapping[str, str]) -> str:
    home = env.get("HOME") or str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if home not in ("", "/") and text.startswith(home + os.sep) else text
