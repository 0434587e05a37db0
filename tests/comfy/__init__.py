"""Tests of the pack inside a real ComfyUI, and of the harness that runs it (harness/, at the repository root).

A package so that its conftest and helpers never shadow the suite's own `conftest` module, which other test
modules import by that name. It puts the repository root on sys.path for `import harness`: `python -m pytest`
from the root has it there already, the `pytest` script or another working folder would not.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
