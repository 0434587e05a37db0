"""The README's three install ways, each from a clean start (a fresh HOME, no HEARTH_* variables, no PYTHONPATH):
the registry's archive made by `comfy node pack` unpacked into a custom_nodes folder, a git clone into one, and
`pip install` of the built wheel into a scratch environment. Each runs the `hearth` command it offers against a
daemon that command starts. And the archive itself: what `comfy node validate` says, what it carries.

The archive tests need comfy-cli (requirements-dev.txt); they skip where it is not installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import make_model
from harness.install import PACK_NAME, comfy_cli, pack_tree, registry_archive, run_comfy_cli, unpack, working_files

REPO = Path(__file__).resolve().parents[1]
needs_comfy_cli = pytest.mark.skipif(comfy_cli() is None, reason="comfy-cli is not installed (requirements-dev.txt)")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return pack_tree(tmp_path_factory.mktemp("tree") / "comfyui-hearth")


@pytest.fixture(scope="module")
def archive(tree, tmp_path_factory) -> Path:
    if comfy_cli() is None:
        pytest.skip("comfy-cli is not installed (requirements-dev.txt)")
    return registry_archive(tree, tmp_path_factory.mktemp("comfy-cli-home"))


class User:
    """A user who just installed the pack: a fresh HOME, nothing of Hearth in the environment."""

    def __init__(self, root: Path, path_dirs: tuple[Path, ...] = ()):
        self.home = root / "home"
        self.home.mkdir(parents=True)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("HEARTH_", "XDG_")) and k not in ("PYTHONPATH", "DISPLAY", "WAYLAND_DISPLAY",
                                                                          "DBUS_SESSION_BUS_ADDRESS")}
        self.env.update(HOME=str(self.home), PATH=os.pathsep.join([*map(str, path_dirs), os.environ["PATH"]]))
        self.state = self.home / ".config" / "hearth"

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, cwd=self.home, capture_output=True, text=True, timeout=timeout)

    def daemon_pid(self) -> int | None:
        try:
            return json.loads((self.state / "daemon.json").read_text())["pid"]
        except FileNotFoundError:
            return None

    def cleanup(self, hearth: list[str]) -> None:
        """Stop what this user started and remove its segments (named after its HEARTH_HOME) from the tmpfs."""
        self.run([*hearth, "evict", "--all"])
        self.run([*hearth, "stop"])
        tag = hashlib.blake2b(os.path.realpath(self.state).encode(), digest_size=3).hexdigest()
        for name in os.listdir("/dev/shm"):
            if name.lstrip(".").startswith(f"hearth-{os.getuid()}-{tag}-"):
                os.unlink(f"/dev/shm/{name}")


def use_the_command(user: User, hearth: list[str], pack_dir: Path, tmp_path: Path) -> None:
    """What a user does with the command an install offers: start, status, config, preload, status, stop."""
    r = user.run([*hearth, "--version"])
    assert r.returncode == 0 and r.stdout.strip() == f"hearth 0.1.0 ({pack_dir})", r  # this install's own files
    r = user.run([*hearth, "status"])
    assert r.returncode == 1 and "not running" in r.stderr, r
    models = tmp_path / "models"
    model = make_model(models / "m.safetensors")
    try:
        r = user.run([*hearth, "start", "--headless"])
        assert r.returncode == 0 and "started the Hearth daemon 0.1.0" in r.stdout, r
        assert user.run([*hearth, "config", "model_dirs", str(models)]).returncode == 0
        r = user.run([*hearth, "preload", str(model)])
        assert r.returncode == 0 and f"ready {model}" in r.stderr, r
        r = user.run([*hearth, "status"])
        assert r.returncode == 0 and str(model) in r.stdout and "ready" in r.stdout, r
        r = user.run([*hearth, "stop"])
        assert r.returncode == 0 and "stopped in" in r.stdout, r
        assert user.daemon_pid() is None
    finally:
        user.cleanup(hearth)


def no_pack_importable(user: User) -> None:
    """The clean start: this Python, in the user's environment, has no comfyui_hearth of its own."""
    r = user.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('comfyui_hearth'))"])
    if r.stdout.strip() != "None":
        pytest.skip(f"{sys.executable} has comfyui_hearth installed ({r.stdout.strip()}): a custom_nodes install "
                    f"cannot be tried from a clean start here (pip uninstall comfyui-hearth)")


# ---- the archive ----------------------------------------------------------------------------------

def test_the_archive_carries_the_pack_a_license_and_nothing_of_development(archive):
    names = set(zipfile.ZipFile(archive).namelist())
    shipped = {p for p in working_files() if p.split("/")[0] not in ("tests", "bench", "harness", ".ci")
               and p != "dev.sh"}
    assert shipped <= names, sorted(shipped - names)
    assert {"LICENSE", "hearth.py", "__init__.py", "pyproject.toml", "requirements.txt", "web/hearth.js"} <= names
    assert any(n.startswith("example_workflows/") and n.endswith(".json") for n in names)
    assert not [n for n in names if n.split("/")[0] in ("tests", "bench", "harness", ".ci") or n == "dev.sh"]
    assert "MIT License" in zipfile.ZipFile(archive).read("LICENSE").decode()


@needs_comfy_cli
def test_comfy_node_validate_passes(tree, tmp_path):
    r = run_comfy_cli(tree, "node", "validate", home=tmp_path / "comfy-cli-home")
    said = r.stdout + r.stderr
    assert r.returncode == 0, said
    assert "passed successfully" in said and "Security warnings" not in said, said


def test_the_version_and_the_dependencies_have_one_meaning_each():
    """pyproject (the registry and pip read it) and core/version.py (the daemon and clients) name one version;
    requirements.txt (the custom_nodes install) lists pyproject's dependencies but torch (ComfyUI's own)."""
    text = (REPO / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', text, re.M).group(1)
    assert f'__version__ = "{version}"' in (REPO / "core" / "version.py").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S).group(1)
    declared = {re.sub(r"\s+", "", d) for d in re.findall(r'"([^"]+)"', block)} - {"torch"}
    listed = {re.sub(r"\s+", "", line.split("  #")[0].replace('"', "'")) for line in
              (REPO / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert {d.replace('"', "'") for d in declared} == listed


# ---- the three install ways ---------------------------------------------------------------------------

@pytest.mark.parametrize("way", ["registry archive", "git clone"])
def test_a_custom_nodes_install_offers_a_hearth_command_that_works(way, tree, tmp_path, request):
    """`python custom_nodes/comfyui-hearth/hearth.py ...` with ComfyUI's Python, only requirements.txt installed."""
    user = User(tmp_path)
    no_pack_importable(user)
    pack = tmp_path / "ComfyUI" / "custom_nodes" / PACK_NAME
    if way == "registry archive":
        unpack(request.getfixturevalue("archive"), pack)
    else:
        subprocess.run(["git", "clone", "-q", str(tree), str(pack)], check=True, capture_output=True)
    r = user.run([sys.executable, "-m", "pip", "install", "--no-index", "--dry-run", "-r",
                  str(pack / "requirements.txt")], timeout=120)
    assert r.returncode == 0, r.stderr  # what ComfyUI-Manager installs is all there: nothing to fetch
    hearth = [sys.executable, str(pack / "hearth.py")]
    use_the_command(user, hearth, pack, tmp_path)
    # Messages name the command that works in this install: there is no `hearth` on PATH here.
    r = user.run([*hearth, "status"])
    said = re.search(r"\(start it with `(.*)`\)", r.stderr)
    assert said and said.group(1).endswith(f" {pack / 'hearth.py'} start"), r.stderr
    assert user.run(["sh", "-c", said.group(1).replace(" start", " --version")]).stdout.startswith("hearth 0.1.0")


def test_the_launcher_imports_its_own_folder_whatever_else_is_importable(tree, tmp_path):
    """A pip-installed comfyui_hearth (here: this checkout, first on PYTHONPATH) is never mixed in."""
    from harness.pack import import_root

    user = User(tmp_path)
    user.env["PYTHONPATH"] = str(import_root())
    r = user.run([sys.executable, str(tree / "hearth.py"), "--version"])
    assert r.returncode == 0 and r.stdout.strip() == f"hearth 0.1.0 ({tree})", r


def test_a_pip_install_offers_the_console_script(tree, tmp_path):
    """pip install of the wheel built from the tree, offline, into a scratch environment that sees this
    Python's packages (torch and the rest) but not this checkout; `hearth` is then on PATH and says so."""
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(wheels), str(tree)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    [wheel] = wheels.glob("comfyui_hearth-0.1.0-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([venv / "bin" / "python", "-c",
                                "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # A path line, not a site dir: this Python's packages are found, its .pth hooks (an editable install) are not.
    (site / "base.pth").write_text(sysconfig.get_path("purelib") + "\n")
    user = User(tmp_path, path_dirs=(venv / "bin",))
    r = user.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", str(wheel)], timeout=300)
    assert r.returncode == 0, r.stderr  # its dependencies are all there: pip needs nothing from the network
    installed = site / "comfyui_hearth"
    assert (installed / "hearth.py").is_file() and (venv / "bin" / "hearth").is_file()
    use_the_command(user, ["hearth"], installed, tmp_path)
    r = user.run(["hearth", "status"])
    assert "(start it with `hearth start`)" in r.stderr, r.stderr  # the console script is this pack's
