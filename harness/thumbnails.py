"""The thumbnails of the pack's example workflows: example_workflows/<name>.jpg, a drawing of the graph.

ComfyUI's templates browser shows `<name>.jpg` beside each example as its card. A render of the example
with the tests' tiny random model would be noise; this draws the graph itself, as the canvas lays it out
(nodes where the workflow puts them, titled as ComfyUI titles them, links in ComfyUI's colours per type),
with Hearth's nodes in the pack's colour. Drawn with Pillow's own font, so any machine draws the same image.

    python -m harness.thumbnails    # rewrites every example's thumbnail (tests/comfy/test_workflows.py
                                    # compares each with a fresh drawing)
"""

from __future__ import annotations

import json

from PIL import Image, ImageDraw, ImageFont

from . import REPO, graphs

EXAMPLES = REPO / "example_workflows"
SIZE = (1024, 576)
MARGIN = 32
CAPTION = 72
BACKGROUND = (32, 32, 32)
NODE, HEARTH_NODE = (53, 53, 53), (122, 62, 24)
TITLE_TEXT, CAPTION_TEXT = (235, 235, 235), (250, 200, 150)
# ComfyUI's default link colours by type (its "dark" palette)
LINKS = {"MODEL": (179, 157, 219), "CLIP": (255, 213, 0), "VAE": (255, 110, 110), "LATENT": (255, 156, 249),
         "CONDITIONING": (255, 169, 49), "IMAGE": (100, 181, 246), "STRING": (119, 221, 119)}
NOTES = ("Note", "MarkdownNote")
TITLE_H = 30  # the canvas's title bar, in graph units


def _shown(node: dict) -> list[tuple[str, str, bool]]:
    """What a Hearth node's card shows, as (label, value, on), from its API-twin inputs: the files it loads
    and the LoRA stack's rows (a row that is off is drawn dim)."""
    out = []
    for value in node["inputs"].values():
        if isinstance(value, dict) and "__value__" in value:  # the swapper's rows
            out += [(row["lora"].removesuffix(".safetensors"),
                     f"{row['strength_model']:.2f} / {row['strength_clip']:.2f}", row["on"])
                    for row in value["__value__"]]
        elif isinstance(value, str) and value.endswith(".safetensors"):
            out.append((value.removesuffix(".safetensors"), "", True))
    return out


def draw(name: str) -> Image.Image:
    """The thumbnail of example_workflows/<name>.json."""
    ui = json.loads((EXAMPLES / f"{name}.json").read_text())
    api = graphs.load(f"{name}_api")
    nodes = {n["id"]: n for n in ui["nodes"] if n["type"] not in NOTES}  # a note is words, not graph
    heading = [n["widgets_values"][0].splitlines()[0].lstrip("# ") for n in ui["nodes"] if n["type"] in NOTES]
    x0 = min(n["pos"][0] for n in nodes.values())
    y0 = min(n["pos"][1] for n in nodes.values()) - TITLE_H
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes.values())
    width, height = SIZE[0] - 2 * MARGIN, SIZE[1] - 2 * MARGIN - CAPTION
    scale = min(width / (x1 - x0), height / (y1 - y0))
    ox = MARGIN + (width - (x1 - x0) * scale) / 2
    oy = MARGIN + (height - (y1 - y0) * scale) / 2

    def at(x: float, y: float) -> tuple[float, float]:
        return ox + (x - x0) * scale, oy + (y - y0) * scale

    image = Image.new("RGB", SIZE, BACKGROUND)
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=min(20, max(12, round(22 * scale))))
    for _, src, src_slot, dst, dst_slot, kind in ui["links"]:
        a, b = nodes[src], nodes[dst]
        start = at(a["pos"][0] + a["size"][0], a["pos"][1] + 14 + 20 * src_slot)
        end = at(b["pos"][0], b["pos"][1] + 14 + 20 * dst_slot)
        pen.line(_bezier(start, end), fill=LINKS.get(kind, (160, 160, 160)), width=max(2, round(4 * scale)))
    radius = max(3, round(8 * scale))
    for node in nodes.values():
        left, top = at(node["pos"][0], node["pos"][1] - TITLE_H)
        right, bottom = at(node["pos"][0] + node["size"][0], node["pos"][1] + node["size"][1])
        twin = api[str(node["id"])]
        hearth = node["type"].startswith("Hearth")
        color = HEARTH_NODE if hearth else NODE
        pen.rounded_rectangle((left, top, right, bottom), radius, fill=color, outline=(20, 20, 20))
        pen.rounded_rectangle((left, top, right, top + TITLE_H * scale), radius, fill=_darker(color))
        title = node.get("title") or twin["_meta"]["title"]
        inner = right - left - 16 * scale
        pen.text((left + 8 * scale, top + TITLE_H * scale / 2), _fit(pen, title, font, inner),
                 fill=TITLE_TEXT, font=font, anchor="lm")
        if not hearth:
            continue
        line = font.size + 8
        y = top + TITLE_H * scale + 6
        for label, value, on in _shown(twin):
            if y + line > bottom:
                break
            bar = (left + 6, y, right - 6, y + line - 3)
            pen.rounded_rectangle(bar, 5, fill=_darker(_darker(color)))
            ink = TITLE_TEXT if on else (130, 110, 95)
            pen.text((bar[2] - 6, (bar[1] + bar[3]) / 2), value, fill=ink, font=font, anchor="rm")
            room = inner - pen.textlength(value, font=font) - 12
            pen.text((bar[0] + 6, (bar[1] + bar[3]) / 2), _fit(pen, label, font, room), fill=ink, font=font,
                     anchor="lm")
            y += line
    caption = ImageFont.load_default(size=30)
    pen.text((MARGIN, SIZE[1] - CAPTION / 2 - MARGIN / 2), heading[0] if heading else name, fill=CAPTION_TEXT,
             font=caption, anchor="lm")
    return image


def _bezier(a: tuple[float, float], b: tuple[float, float], steps: int = 24) -> list[tuple[float, float]]:
    """A link as the canvas draws it: a cubic curve leaving and entering horizontally."""
    reach = max(30.0, abs(b[0] - a[0]) / 2)
    c1, c2 = (a[0] + reach, a[1]), (b[0] - reach, b[1])
    out = []
    for i in range(steps + 1):
        t = i / steps
        u = 1 - t
        out.append((u**3 * a[0] + 3 * u * u * t * c1[0] + 3 * u * t * t * c2[0] + t**3 * b[0],
                    u**3 * a[1] + 3 * u * u * t * c1[1] + 3 * u * t * t * c2[1] + t**3 * b[1]))
    return out


def _darker(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(round(c * 0.7) for c in rgb)


def _fit(pen: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    if pen.textlength(text, font=font) <= width:
        return text
    while text and pen.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def names() -> list[str]:
    return sorted(p.stem for p in EXAMPLES.glob("*.json"))


def main() -> None:
    for name in names():
        out = EXAMPLES / f"{name}.jpg"
        draw(name).save(out, quality=88, optimize=True)
        print(out)


if __name__ == "__main__":
    main()
