#!/usr/bin/env python3
"""The `hearth` command of this folder, for installs that have no console script (ComfyUI's custom_nodes):

    python custom_nodes/comfyui-hearth/hearth.py status

Run with the Python of the ComfyUI that has the pack (its requirements are installed there). It imports the
pack from this folder, under the package name comfyui_hearth, whatever else is installed: a pip-installed
comfyui_hearth of another version is never mixed in. The pack starts its daemon with this file too.
"""

import importlib.util
import os
import sys


def _import_pack() -> None:
    here = os.path.dirname(os.path.realpath(__file__))
    # Python put this folder first on sys.path: its rooms (core, cli, nodes, ...) would shadow any top-level
    # module of the same name that a dependency imports.
    if sys.path and os.path.realpath(sys.path[0] or os.curdir) == here:
        del sys.path[0]
    spec = importlib.util.spec_from_file_location("comfyui_hearth", os.path.join(here, "__init__.py"),
                                                  submodule_search_locations=[here])
    if spec is None or spec.loader is None:
        raise ImportError(f"no Python package at {here}")
    pack = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_hearth"] = pack  # before it runs: its relative imports look it up there
    spec.loader.exec_module(pack)


if __name__ == "__main__":
    _import_pack()
    from comfyui_hearth.cli import main

    sys.exit(main())
