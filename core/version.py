"""Version of the pack and of the daemon protocol that clients and the daemon must share."""

from __future__ import annotations

import re

# pyproject.toml's [project] version says the same (the registry reads it there); tests/test_install checks.
__version__ = "0.1.0"
# Bumped whenever /v1 requests or answers change in a way an older peer would misread.
PROTOCOL = 1


def is_older(theirs: object, ours: str = __version__) -> bool:
    """Whether version `theirs` (a running daemon's) comes before `ours`; False where either is unreadable.

    Only an older daemon is replaced by the pack: a newer one (another ComfyUI with a newer pack) stays.
    """
    def parts(v: object) -> tuple[int, ...] | None:
        m = re.fullmatch(r"(\d+(?:\.\d+)*)", str(v))
        if m is None:
            return None
        numbers = [int(p) for p in m.group(1).split(".")]
        while numbers and numbers[-1] == 0:  # 0.1 and 0.1.0 are one version
            numbers.pop()
        return tuple(numbers)

    a, b = parts(theirs), parts(ours)
    return a is not None and b is not None and a < b
