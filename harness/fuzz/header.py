"""Hostile .safetensors files, and the differential that holds Hearth's validator to safetensors' loader.

`files()` draws a valid layout (names, dtypes, shapes, data in an order of its own, metadata) and then
0 to 3 mutations of its structure or its bytes. `check(data, path)` writes the file and runs, on the same
bytes: `parse_header` (Hearth's own parser), `read_header` (Hearth's parser, then safetensors' safe_open:
what the daemon runs before publishing and the client before mapping), the stock
`safetensors.torch.load_file`, and, where Hearth accepts, the client's `map_segment`. It raises Violation
for a crash (anything but BadHeader from the validators), tensors served from a file the stock load
refuses, a tensor or metadata of Hearth's that differs from the stock load's by a single bit, or a refusal
that is not one line naming the file. Otherwise it returns the outcome, for the run's statistics.

A file the validators pass can still fail in `map_segment` where torch cannot make its views (zero-element
tensors whose strides overflow int64 as torch computes them): the client then loads the stock way, which
raises the stock error, so that outcome is allowed exactly when the stock load refuses the file too.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from comfyui_hearth.core.errors import BadHeader
from comfyui_hearth.core.safetensors_format import DTYPES, MAX_HEADER, parse_header, read_header


class Violation(Exception):
    """A broken property: `kind` names which (crash, lenient, wrong_tensor, message, hang, ...)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


# ---- the generator ----------------------------------------------------------------------------------

class Raw(str):
    """JSON text that goes into the header as it is: a number spelt oddly, a broken token."""


@dataclass
class Obj:
    """A JSON object whose names may repeat (a dict cannot hold a duplicate name)."""

    pairs: list


@dataclass
class Layout:
    pairs: list  # [name, value] of the header, in header order; values are JSON trees (Raw and Obj allowed)
    data: int  # length of the data area the tensors tile
    seed: int  # of the data area's bytes
    ascii: bool = True  # non-ASCII text as \u escapes, or as UTF-8 (lone surrogates then as invalid bytes)
    top: Any = None  # a whole header that replaces the object (an array, a number, ...)
    length: int | None = None  # the 8-byte length prefix, where a mutation set it
    prefix: str = ""
    suffix: str = ""
    data_delta: int = 0
    flips: list = field(default_factory=list)  # (fraction of the header text, byte) to overwrite
    cut: float | None = None  # keep this fraction of the file
    relayout: bool = False  # recompute offsets from dtypes and shapes after the mutations

    def entries(self) -> list[dict]:
        return [v for k, v in self.pairs if k != "__metadata__" and isinstance(v, dict)]


def dump(v: Any, ascii_only: bool) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, (Obj, dict)):
        pairs = v.pairs if isinstance(v, Obj) else list(v.items())
        return "{" + ", ".join(f"{dump(str(k), ascii_only)}: {dump(x, ascii_only)}" for k, x in pairs) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(dump(x, ascii_only) for x in v) + "]"
    return json.dumps(v, ensure_ascii=ascii_only)  # str, int, float (NaN and Infinity too), bool, None


def nbytes(e: dict) -> int | None:
    """The byte size a tensor entry's dtype and shape imply, or None where they imply none."""
    dtype, shape = e.get("dtype"), e.get("shape")
    if not isinstance(dtype, str) or dtype not in DTYPES or not isinstance(shape, list):
        return None
    if not all(type(d) is int and d >= 0 for d in shape):
        return None
    n = DTYPES[dtype].size * math.prod(shape)
    return n if n <= 1 << 16 else None


def to_bytes(lay: Layout) -> bytes:
    if lay.relayout:
        pos = 0
        for e in lay.entries():
            n = nbytes(e)
            if n is not None:
                e["data_offsets"] = [pos, pos + n]
                pos += n
        lay.data = pos
    text = lay.prefix + dump(lay.top if lay.top is not None else Obj(lay.pairs), lay.ascii) + lay.suffix
    head = bytearray(text.encode("utf-8", "surrogatepass"))
    for frac, byte in lay.flips:
        if head:
            head[min(int(frac * len(head)), len(head) - 1)] = byte
    n = len(head) if lay.length is None else lay.length
    data = random.Random(lay.seed).randbytes(max(0, lay.data + lay.data_delta))
    out = struct.pack("<Q", n) + bytes(head) + data
    return out if lay.cut is None else out[:int(len(out) * lay.cut)]


DTYPE_NAMES = sorted(DTYPES)
ODD_DTYPES = ["F4", "F6_E2M3", "F6_E3M2", "F8_E4M3FN", "f32", "F32 ", "", "BF16\0", "C128", "I128", "U1"]
ODD_DIMS = [-1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, 10**30,
            1.0, 2.5, True, False, None, "2", Raw("1e3"), Raw("2.0"), Raw("-0"), Raw("02"), Raw("9" * 5000)]
SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)
names = st.from_regex(r"[a-z][a-z0-9_.]{0,15}", fullmatch=True) | st.text(max_size=8)


def _pick(draw, lay: Layout) -> dict | None:
    entries = lay.entries()
    return draw(st.sampled_from(entries)) if entries else None


def m_dtype(draw, lay):
    if (e := _pick(draw, lay)) is not None:
        e["dtype"] = draw(st.sampled_from(DTYPE_NAMES) | st.sampled_from(ODD_DTYPES) | json_values)


def m_shape(draw, lay):
    if (e := _pick(draw, lay)) is None:
        return
    shape = e["shape"] if isinstance(e.get("shape"), list) else []
    how = draw(st.sampled_from(["dim", "append", "drop", "replace", "zero_with_huge"]))
    if how == "dim" and shape:
        shape[draw(st.integers(0, len(shape) - 1))] = draw(st.sampled_from(ODD_DIMS) | st.integers())
    elif how == "append":
        shape.insert(draw(st.integers(0, len(shape))), draw(st.sampled_from([0, 1, 1, 2]) | st.sampled_from(ODD_DIMS)))
    elif how == "drop" and shape:
        shape.pop(draw(st.integers(0, len(shape) - 1)))
    elif how == "zero_with_huge":  # no elements, whatever the other dimensions: only strides can overflow
        shape[:] = [0, draw(st.sampled_from([2**31, 2**62, 2**63 - 1, 2**63])), draw(st.integers(1, 8))]
        lay.relayout = True
    else:
        e["shape"] = draw(json_values)
        return
    e["shape"] = shape


def m_offsets(draw, lay):
    offs = (e := _pick(draw, lay)) and e.get("data_offsets")
    if not isinstance(offs, list) or not offs or not all(type(o) is int for o in offs):
        return
    b, end = offs[0], offs[-1]
    d = draw(st.integers(-3, 3))
    e["data_offsets"] = draw(st.sampled_from([
        [b + d, end], [b, end + d], [end, b], [b], [b, end, end], [float(b), end], [b, 2**64], [-1, end],
        [Raw("0.0"), end], [b, Raw(f"{end}e0")], [b, 2**64 + end], "x", None, [],
    ]))


def m_fields(draw, lay):
    if (e := _pick(draw, lay)) is None:
        return
    how = draw(st.sampled_from(["delete", "add", "rename"]) if e else st.just("add"))
    key = draw(st.sampled_from(sorted(e))) if e else None
    if how == "delete":
        del e[key]
    elif how == "add":
        e[draw(st.sampled_from(["extra", "Dtype", "offsets", "__proto__"]))] = draw(json_values)
    else:
        e[key.upper() if key != key.upper() else key.lower()] = e.pop(key)


def m_entry(draw, lay):
    if lay.pairs:
        i = draw(st.integers(0, len(lay.pairs) - 1))
        lay.pairs[i][1] = draw(json_values)


def m_duplicate(draw, lay):
    if lay.pairs:
        name = draw(st.sampled_from([k for k, _ in lay.pairs]))
        value = copy.deepcopy(draw(st.sampled_from([v for _, v in lay.pairs]))) \
            if draw(st.booleans()) else draw(json_values)
        lay.pairs.insert(draw(st.integers(0, len(lay.pairs))), [name, value])


def m_metadata(draw, lay):
    value = draw(st.sampled_from(["json", "non_str", "surrogate", "dup", "list", "move"]))
    meta = {"json": lambda: draw(json_values),
            "non_str": lambda: {"a": draw(json_values.filter(lambda v: not isinstance(v, str)))},
            "surrogate": lambda: {"k": "v" + draw(SURROGATES)} if draw(st.booleans())
            else {draw(SURROGATES): "v"},
            "dup": lambda: Obj([["k", "a"], ["k", "b"]]),
            "list": list,
            "move": lambda: {"format": "pt"}}[value]()
    lay.pairs = [p for p in lay.pairs if p[0] != "__metadata__"]
    lay.pairs.insert(draw(st.integers(0, len(lay.pairs))), ["__metadata__", meta])


def m_name(draw, lay):
    if lay.pairs:
        i = draw(st.integers(0, len(lay.pairs) - 1))
        lay.pairs[i][0] = draw(st.sampled_from(["", "\0", "__metadata__", "x" * 1000, "a\nb"])
                               | st.tuples(names, SURROGATES).map("".join))


def m_data(draw, lay):
    lay.data_delta = draw(st.integers(-4, 4))


def m_length(draw, lay):
    true = len(to_bytes(Layout(lay.pairs, lay.data, lay.seed, lay.ascii, lay.top))) - 8 - lay.data
    lay.length = draw(st.sampled_from([0, 1, 2, MAX_HEADER, MAX_HEADER + 1, 2**63, 2**64 - 1])
                      | st.integers(-3, 3).map(lambda d: max(0, true + d)) | st.integers(0, 2**64 - 1))


def m_text(draw, lay):
    how = draw(st.sampled_from(["pad", "tail", "lead", "bom", "flip"]))
    if how == "pad":  # trailing spaces: what safetensors writes to align the data area to 8 bytes
        lay.suffix += " " * draw(st.integers(1, 9))
    elif how == "tail":
        lay.suffix += draw(st.sampled_from(["\n", "\t", "\0", "}", ",", " x", "\r\n", "[]"]))
    elif how == "lead":
        lay.prefix = draw(st.sampled_from([" ", "\n", "\t", "\0"])) + lay.prefix
    elif how == "bom":
        lay.prefix = "\ufeff" + lay.prefix
    else:
        lay.flips.append((draw(st.floats(0, 1)), draw(st.integers(0, 255))))


def m_cut(draw, lay):
    lay.cut = draw(st.floats(0, 1))


def m_top(draw, lay):
    lay.top = draw(json_values.filter(lambda v: not isinstance(v, dict))
                   | st.integers(1, 100_000).map(lambda n: Raw("[" * n + "]" * n)))


def m_number(draw, lay):
    """An integer of a shape or an offset spelt as JSON allows but no integer parser should take."""
    if (e := _pick(draw, lay)) is None:
        return
    key = draw(st.sampled_from(["shape", "data_offsets"]))
    seq = e.get(key)
    if isinstance(seq, list) and seq and isinstance(seq[0], int):
        i = draw(st.integers(0, len(seq) - 1))
        seq[i] = Raw(draw(st.sampled_from(["{}.0", "{}e0", "0{}", "+{}", "{}E+0", "{}.00000000000000000001"]))
                     .format(seq[i]))


def m_relayout(draw, lay):
    lay.relayout = True


MUTATIONS = [m_dtype, m_shape, m_offsets, m_fields, m_entry, m_duplicate, m_metadata, m_name, m_data,
             m_length, m_text, m_cut, m_top, m_number, m_relayout]


@st.composite
def files(draw) -> bytes:
    """The bytes of a .safetensors file: valid, or valid but for 1 to 3 mutations."""
    tensor_names = draw(st.lists(names, max_size=6, unique=True))
    entries = [{"dtype": draw(st.sampled_from(DTYPE_NAMES)), "shape": draw(st.lists(st.integers(0, 4), max_size=3))}
               for _ in tensor_names]
    pos = 0
    for i in draw(st.permutations(range(len(entries)))):  # the data in an order other than the header's
        n = nbytes(entries[i])
        entries[i]["data_offsets"] = [pos, pos + n]
        pos += n
    lay = Layout([[k, e] for k, e in zip(tensor_names, entries, strict=True)], pos, draw(st.integers(0, 2**32)),
                 ascii=draw(st.booleans()))
    meta = draw(st.none() | st.dictionaries(st.text(max_size=6), st.text(max_size=12), max_size=3))
    if meta is not None:
        lay.pairs.insert(draw(st.integers(0, len(lay.pairs))), ["__metadata__", meta])
    for mutate in draw(st.lists(st.sampled_from(MUTATIONS), max_size=3)):
        mutate(draw, lay)
    return to_bytes(lay)


# ---- the differential -------------------------------------------------------------------------------

def _stock(path: Path) -> dict | BaseException:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            return {"tensors": tensors, "metadata": f.metadata() or {}}
    except Exception as e:  # noqa: BLE001 - a refusal of the reference, whatever its type
        return e


def _u8(t):
    import torch

    return t.contiguous().reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


def _compare(mine: dict, metadata: dict, stock: dict) -> None:
    import torch

    want = stock["tensors"]
    if set(mine) != set(want):
        raise Violation("wrong_tensor", f"names {sorted(mine)[:5]} != stock {sorted(want)[:5]}")
    for k, t in want.items():
        got = mine[k]
        if got.dtype != t.dtype or got.shape != t.shape or not torch.equal(_u8(got), _u8(t)):
            raise Violation("wrong_tensor", f"{k!r}: {got.dtype} {tuple(got.shape)} vs stock {t.dtype} "
                                            f"{tuple(t.shape)} (or other bytes)")
    if metadata != stock["metadata"]:
        raise Violation("wrong_metadata", f"{metadata!r} != stock {stock['metadata']!r}")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _check_refusal(e: BadHeader, name: str) -> None:
    if "\n" in e.message or not e.message.startswith(name) or len(e.message) > len(name) + 600:
        raise Violation("message", f"not one short line naming the file: {e.message[:300]!r}")


def outcome_class(message: str, name: str) -> str:
    """A refusal's message without the file, the names, the values and the numbers: which check refused."""
    text = message.removeprefix(name).removeprefix(": ")
    text = re.split(r",? got |, not valid| \(|: safetensors refuses it: ", text)[0] + \
        (": safetensors refuses it" if ": safetensors refuses it: " in text else "")
    text = re.sub(r"^tensor .*?( must be|: )", r"tensor T\1", text)
    text = re.sub(r"dtype \S+ and shape .* need", "dtype and shape need", text)
    text = re.sub(r"unknown dtype .*", "unknown dtype", text)
    return re.sub(r"'(?:[^'\\]|\\.)*'|\d+", "N", text).strip()[:80]


def slug(outcome: str) -> str:
    """An outcome as a file name: the corpus names each kept file after its outcome."""
    return re.sub(r"[^a-z0-9]+", "_", outcome.lower()).strip("_")[:90]


def verdict(outcome: str) -> str:
    """The part of an outcome that says who accepted or refused it (before the check's own words)."""
    return slug(outcome.split(":")[0])


def check(data: bytes, path: Path) -> str:
    """Hold Hearth to the stock load on `data` (written at `path`); the outcome, or Violation."""
    from comfyui_hearth.client.mapping import map_segment

    path.write_bytes(data)
    name = str(path)
    try:
        parse_header(data, len(data), name)
        ours = "accept"
    except BadHeader as e:
        _check_refusal(e, name)
        ours = "refuse"
    except Exception as e:  # the finding
        raise Violation("crash", f"parse_header raised {type(e).__name__}: {str(e)[:200]}") from e
    fd = os.open(path, os.O_RDONLY)
    try:
        read_header(fd, name)
        refusal = None
    except BadHeader as e:
        _check_refusal(e, name)
        refusal = e.message
    except Exception as e:
        raise Violation("crash", f"read_header raised {type(e).__name__}: {str(e)[:200]}") from e
    finally:
        os.close(fd)
    stock = _stock(path)
    stock_refuses = isinstance(stock, BaseException)
    if refusal is None:
        try:
            tensors, metadata = map_segment(name, len(data), name)
        except Exception as e:  # the client then loads the stock way: stock's answer, either way
            if stock_refuses:
                return f"accept, not mappable, stock refuses: {_first_line(e)}"
            if isinstance(e, TypeError):  # a dtype this torch cannot hold: the stock load, by design
                return f"accept, not mappable: {_first_line(e)}"
            raise Violation("crash", f"map_segment raised {type(e).__name__}: {str(e)[:200]}") from e
        if stock_refuses:
            raise Violation("lenient", f"Hearth serves tensors of a file the stock load refuses "
                                       f"({type(stock).__name__}: {_first_line(stock)})")
        _compare(tensors, metadata, stock)
        return "accept"
    parser = "Hearth's parser" if ours == "refuse" else "safetensors' parser only"
    return f"refuse ({parser}; stock {'refuses' if stock_refuses else 'accepts'}): " \
           f"{outcome_class(refusal, name)}"
