"""The scenario benchmark's chart: stock vs Hearth bars per scenario, drawn with Pillow (no plotting library).

Two panels: times on a log scale (the ratios span two decades) and memory on a linear one. Each row is a
pair of bars at the median, labelled with the value and Hearth's ratio to stock.

    python -m bench.chart bench/results/scenarios.json bench/results/scenarios.png    # redraw from a run's JSON
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .scenarios.report import Row, rows

WIDTH, ROW_H, BAR_H = 1280, 46, 15
LEFT, RIGHT = 430, 150  # room for the labels and the ratios
STOCK, HEARTH, GRID, INK, MUTED = "#9a9a9a", "#e8702a", "#e4e4e4", "#222222", "#666666"
PANELS = (("time", "Time, lower is better (log scale)"), ("memory", "Memory, lower is better"))


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same chart on every machine


def draw(doc: dict, path: Path) -> Path:
    panels = [(title, [r for r in rows(doc) if r.chart == key and (r.stock or r.hearth)]) for key, title in PANELS]
    panels = [(t, rs) for t, rs in panels if rs]
    height = 90 + sum(70 + ROW_H * len(rs) for _, rs in panels) + 30
    img = Image.new("RGB", (WIDTH, height), "white")
    d = ImageDraw.Draw(img)
    m = doc["machine"]
    d.text((20, 16), "Hearth vs stock ComfyUI: SD1.5 checkpoint "
           f"({doc['checkpoint']['bytes'] / 1e9:.1f} GB fp16), median of fresh processes", font=_font(22), fill=INK)
    d.text((20, 48), f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']:.0f} GiB, ComfyUI {m['comfyui']}, CPU only; "
           f"{doc['date']}; load average {m['load_before'].split()[0]} before, {m['load_after'].split()[0]} after",
           font=_font(14), fill=MUTED)
    _legend(d, WIDTH - 250, 50)
    y = 90
    for title, rs in panels:
        y = _panel(d, y, title, rs, log="log" in title)
    img.save(path, optimize=True)
    return path


def _legend(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    for color, name in ((STOCK, "stock ComfyUI"), (HEARTH, "Hearth")):
        d.rectangle((x, y + 2, x + 14, y + 14), fill=color)
        d.text((x + 20, y), name, font=_font(14), fill=INK)
        x += 130


def _panel(d: ImageDraw.ImageDraw, y: int, title: str, rs: list[Row], log: bool) -> int:
    d.text((20, y), title, font=_font(17), fill=INK)
    top, x0, x1 = y + 34, LEFT, WIDTH - RIGHT
    values = [statistics.median(xs) for r in rs for xs in (r.stock, r.hearth) if xs]
    scale = _LogScale(values, x0, x1) if log else _LinearScale(values, x0, x1)
    bottom = top + ROW_H * len(rs)
    for value, label in scale.ticks():
        x = scale(value)
        d.line((x, top - 4, x, bottom), fill=GRID)
        d.text((x, bottom + 2), label, font=_font(12), fill=MUTED, anchor="ma")
    for i, r in enumerate(rs):
        ry = top + i * ROW_H
        label = f"{r.scenario}. {r.label.strip()}"  # ASCII only: the bundled font has no arrows
        first, rest = _fit(d, label, _font(14), LEFT - 30)
        d.text((20, ry + 6), first, font=_font(14), fill=INK)
        second = f"grey bar: {r.stock_is}" if r.stock_is else rest
        if second:  # a label too long for one line goes on, under it, unless the grey bar is explained there
            d.text((34, ry + 24), _fit(d, second, _font(12), LEFT - 44)[0], font=_font(12), fill=MUTED)
        for j, (values, color) in enumerate(((r.stock, STOCK), (r.hearth, HEARTH))):
            by = ry + 4 + j * (BAR_H + 2)
            if not values:
                d.text((x0 + 5, by + BAR_H // 2), "not run (see the notes)", font=_font(12), fill=MUTED, anchor="lm")
                continue
            v = statistics.median(values)
            d.rectangle((x0, by, max(x0 + 1, scale(v)), by + BAR_H), fill=color)
            d.text((max(x0 + 1, scale(v)) + 5, by + BAR_H // 2), _value(v, r.unit), font=_font(12), fill=INK,
                   anchor="lm")
        d.text((WIDTH - 20, ry + 12), r.verdict, font=_font(15), fill=INK, anchor="ra")
    return bottom + 36


def _value(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.1f} s" if v < 10 else f"{v:.0f} s"
    if unit == "x":
        return f"{v:.2f}x ckpt"
    return f"{v:.2f} {unit}"


class _LogScale:
    def __init__(self, values: list[float], x0: int, x1: int):
        positive = [v for v in values if v > 0] or [1.0]
        self.lo = math.floor(math.log10(min(positive)))
        self.hi = max(self.lo + 1, math.ceil(math.log10(max(positive))))
        self.x0, self.x1 = x0, x1 - 60  # room for the longest bar's value

    def __call__(self, v: float) -> float:
        f = (math.log10(max(v, 10.0 ** self.lo)) - self.lo) / (self.hi - self.lo)
        return self.x0 + f * (self.x1 - self.x0)

    def ticks(self) -> list[tuple[float, str]]:
        return [(10.0 ** e, _value(10.0 ** e, "s")) for e in range(self.lo, self.hi + 1)]


class _LinearScale:
    def __init__(self, values: list[float], x0: int, x1: int):
        self.top = max(values) * 1.05 or 1.0
        self.x0, self.x1 = x0, x1 - 60

    def __call__(self, v: float) -> float:
        return self.x0 + max(v, 0.0) / self.top * (self.x1 - self.x0)

    def ticks(self) -> list[tuple[float, str]]:
        step = 10 ** math.floor(math.log10(self.top / 2))
        step *= 5 if self.top / step > 10 else 2 if self.top / step > 5 else 1
        n = int(self.top / step)
        return [(i * step, f"{i * step:g}") for i in range(n + 1)]


if __name__ == "__main__":
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))


def _fit(d: ImageDraw.ImageDraw, text: str, font, width: int) -> tuple[str, str]:
    """The words of `text` that fit in `width` pixels, and the rest ('...' ends a line cut in a word)."""
    words = text.split(" ")
    for n in range(len(words), 0, -1):
        line = " ".join(words[:n])
        if d.textlength(line, font=font) <= width:
            return line, " ".join(words[n:])
    while text and d.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "...", ""
