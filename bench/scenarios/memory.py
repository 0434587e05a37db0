"""A process's memory as the kernel accounts it (Linux /proc), for the scenario benchmark.

- *private*: `Anonymous`, the pages this process owns: the copies a build made, its heap, and the pages it
  wrote in a copy-on-write mapping. Not USS, nor `Private_Dirty`: both count a shared file's or segment's
  pages as private while only one process maps them (tmpfs pages are always "dirty": no backing file), so
  a lone process reading Hearth's segment would look as if it had copied it.
- *PSS*: every page divided by the number of processes mapping it; the sum over processes is their RAM.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KIB = 1024


@dataclass(frozen=True)
class Usage:
    pss: int  # bytes
    private: int  # Anonymous, bytes
    uss: int  # Private_Clean + Private_Dirty, bytes
    rss: int

    def as_dict(self) -> dict[str, int]:
        return {"pss": self.pss, "private": self.private, "uss": self.uss, "rss": self.rss}


def usage(pid: int) -> Usage:
    """The totals of /proc/PID/smaps_rollup."""
    fields = _fields(Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines())
    return Usage(pss=fields["Pss"], private=fields["Anonymous"],
                 uss=fields["Private_Clean"] + fields["Private_Dirty"], rss=fields["Rss"])


def mapping_pss(pid: int, path: Path | str) -> int:
    """PSS (bytes) of every mapping of `path` in `pid`: its share of a segment that all holders map."""
    target, total, inside = os.fspath(path), 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping's header line: "addr-addr perms ..."
                inside = line.rstrip().endswith(target)
            elif inside and line.startswith("Pss:"):
                total += int(line.split()[1]) * KIB
    return total


def _fields(lines: list[str]) -> dict[str, int]:
    out = {}
    for line in lines:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[name] = int(parts[0]) * KIB
    return out
