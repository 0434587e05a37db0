"""Progress of long CLI work in bytes: a tqdm bar on stderr where stderr is a terminal, nothing elsewhere.

The lines said along the way (a file ready, a file failed) are the same either way: on a terminal tqdm prints
them above the bar, elsewhere they are plain lines on stderr, which scripts and tests read.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """One bar for `total` bytes of work; `update` moves it to what is done, `say` prints a line."""

    def __init__(self, total: int, label: str = "") -> None:
        self._total = total
        self._bar = tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                         leave=False, dynamic_ncols=True) if sys.stderr.isatty() else None

    def update(self, done: int, label: str | None = None) -> None:
        if self._bar is None:
            return
        if label is not None and label != self._bar.desc:
            self._bar.set_description_str(label, refresh=False)
        self._bar.update(max(0, min(done, self._total) - self._bar.n))  # a fill never goes back

    def say(self, line: str) -> None:
        if self._bar is None:
            print(line, file=sys.stderr)
        else:
            self._bar.write(line, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
