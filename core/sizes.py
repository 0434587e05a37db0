"""Byte sizes as people write them ('12G', '512MiB', '40%') and as Hearth prints them (binary units).

GB and GiB both mean 2^30 here, as nvidia-smi, ComfyUI and the Linux tools count.
"""

from __future__ import annotations

import math

GiB = 1 << 30

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": GiB, "GB": GiB, "GIB": GiB, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}


def parse_size(text: str | int | float, total: int | None = None, unit: int = 1) -> int:
    """Parse '12G', '512MiB', '1.5GB', '40%' (of `total`) or a bare number of `unit`s into bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"not a size: {text!r}")
        return int(text * unit)
    s = str(text).strip().upper().replace(" ", "")
    if s.endswith("%"):
        if total is None:
            raise ValueError(f"a percentage ({text}) needs a total to be taken of")
        try:
            pct = float(s[:-1])
        except ValueError:
            raise ValueError(f"not a percentage: {text!r}") from None
        if not 0 < pct <= 100:
            raise ValueError(f"percentage out of range: {text}")
        return int(total * pct / 100)
    num = s.rstrip("KMGTIB")
    suffix = s[len(num):]
    try:
        if suffix not in _UNITS or not num:
            raise ValueError
        value = float(num)
        if not math.isfinite(value):  # 'inf' and 'nan' parse as floats
            raise ValueError
    except ValueError:
        raise ValueError(f"not a size: {text!r} (examples: 12G, 512M, 40%, 1073741824)") from None
    if value < 0:
        raise ValueError(f"negative size: {text}")
    return int(value * (_UNITS[suffix] if suffix else unit))


def format_size(n: float) -> str:
    """Human-readable bytes in the largest binary unit below the number: '512 B', '1.5 GiB'."""
    for name in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {name}" if name == "B" else f"{n:.1f} {name}"
        n /= 1024
    return f"{n:.1f} TiB"
