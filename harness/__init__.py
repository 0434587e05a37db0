"""The ComfyUI harness of Hearth's tests and benchmarks: a real ComfyUI, driven from outside, on this machine.

What it holds: finding a checkout that can start in this Python (checkout), the import-only torchvision and
torchaudio stand-ins its processes get (standins/), random-weight SD1.5 checkpoints and LoRAs built from
ComfyUI's own classes (models), a headless ComfyUI server driven over HTTP and its websocket (server), a
private Hearth daemon (daemon), and the API-format graphs with their stock twins (graphs/).

Why a package of its own: the tests (tests/comfy) and the benchmarks (bench/) both run ComfyUI the same way,
and neither should import the other. It is a development tool, not part of the pack: it is not in
pyproject's package list, and .comfyignore keeps it out of the registry archive. Imported as a top-level
package from the repository root (`python -m pytest tests`, `python -m bench.x` put the root on sys.path).
Importing it makes `comfyui_hearth` this checkout, for this process and its children (pack.py): the pack is
never pip-installed for the tests, as it is not in a ComfyUI install.

It imports nothing of ComfyUI: ComfyUI runs in child processes with the environment built here.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the pack: what a ComfyUI gets as custom_nodes/comfyui-hearth

from .pack import make_importable  # noqa: E402 - pack.py reads REPO

make_importable()
