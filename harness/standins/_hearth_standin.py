"""Import-only stand-ins for packages that ComfyUI imports at start-up but the Hearth tests never run.

No torchvision or torchaudio build matches the CPU torch used here, and ComfyUI imports both (0.28 also
`from torchvision.ops import roi_align`, `from torchvision.models.optical_flow import raft_large`, ...) for
models SD1.5 never touches. A stand-in package answers every submodule and every name, so any such import
succeeds; a name is a `Placeholder` that raises the moment it is used (called, subclassed and instantiated,
compared, iterated), never a wrong result. Libraries that probe for the package find it (transformers'
`is_torchvision_available` looks with find_spec; its version is 0.0.0+hearth.standin, no distribution
metadata): only paths the SD1.5 tests never take would then reach a placeholder.

A stand-in is a fallback only: where the real package is installed further along sys.path (a GPU machine's
Python has torchvision), `install` loads that one in its place, so the stand-ins' folder can go first on
every ComfyUI process's path (harness/checkout.comfy_env) wherever it runs. `av` has one too: ComfyUI's
comfy_api imports it at start-up, and its wheel (35 MB) is too large to carry to a GPU machine.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))


class StandInUsed(RuntimeError):
    """Code reached a stand-in: the test touched a model path that needs the real package."""


def _refuse(path: str):
    raise StandInUsed(f"{path} is an import-only stand-in for the Hearth tests (the real package is not "
                      "installed here); this code path needs it")


class Placeholder:
    """Any name of a stand-in module: attributes are placeholders too (`InterpolationMode.BILINEAR` as a
    default argument), anything else raises StandInUsed."""

    def __init__(self, path: str):
        object.__setattr__(self, "_path", path)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)  # protocols (copy, pickle, inspect) must see "no such attribute"
        return Placeholder(f"{self._path}.{name}")

    def __call__(self, *args, **kwargs):
        _refuse(self._path)

    def __mro_entries__(self, bases):
        # `class Net(torchvision.models.ResNet)` at import: a class that refuses to be instantiated.
        path = self._path
        return (type(path.rsplit(".", 1)[-1], (), {"__init__": lambda self, *a, **k: _refuse(path)}),)

    def __repr__(self) -> str:
        return f"<stand-in {self._path}>"

    def __bool__(self) -> bool:
        _refuse(self._path)

    def __iter__(self):
        _refuse(self._path)

    def __eq__(self, other):
        _refuse(self._path)

    __hash__ = object.__hash__


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes every `<root>.<anything>` a stand-in module."""

    def __init__(self, root: str):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(self.root + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        _stand_in(module)


def _stand_in(module: types.ModuleType) -> None:
    module.__path__ = []  # a package, so deeper submodules import (through the finder) too
    module.__getattr__ = lambda name: _name(module.__name__, name)


def _name(module: str, name: str):
    if name.startswith("__"):
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return Placeholder(f"{module}.{name}")


def install(package: types.ModuleType) -> None:
    """The real package in place of the stand-in `package` (its `__init__` module, running) where one is
    installed; else turn `package` into one that answers any submodule and name."""
    others = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
    real = importlib.machinery.PathFinder.find_spec(package.__name__, others)
    if real is not None and real.loader is not None:
        module = importlib.util.module_from_spec(real)
        sys.modules[package.__name__] = module  # what the running import statement will hand out
        real.loader.exec_module(module)
        return
    if not any(isinstance(f, _Finder) and f.root == package.__name__ for f in sys.meta_path):
        sys.meta_path.append(_Finder(package.__name__))
    _stand_in(package)
