"""A table of hostile or broken .safetensors files, shared by the header unit tests and the daemon tests.

Each case: (id, file bytes, words the error must contain, whether `safetensors.safe_open` refuses it too).
The last column records the reference implementation's behaviour (safetensors 0.8) so that the tests hold
both to the same files: where it is True, safe_open must refuse; where False, it accepts what Hearth
refuses, and the test asserts that as well, so a change in the reference shows up.
"""

from __future__ import annotations

import json
import struct


def file(header, data: bytes = b"", n: int | None = None) -> bytes:
    """Bytes of a safetensors file from a header (dict, str or bytes) and a data area."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    return struct.pack("<Q", len(header) if n is None else n) + header + data


def t(dtype="F32", shape=(2,), offs=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offs)}


GOOD = file({"a": t(), "b": t("I8", (3,), (8, 11)), "__metadata__": {"format": "pt"}}, bytes(11))

# id, bytes, words the message must contain (besides the file name), safe_open refuses too
CASES = [
    ("shorter_than_8", b"\x05\x00\x00", ["too short"], True),
    ("empty_file", b"", ["too short"], True),
    ("truncated_header", file({"a": t()}, bytes(8))[:20], ["past the end"], True),
    ("length_past_eof", file('{"a": 1}', n=1000), ["past the end"], True),
    ("length_huge", file("{}", n=2**63 + 5), ["header length", "out of range"], True),
    ("length_over_100mb", file("{}", n=100 * 1024 * 1024 + 1), ["out of range"], True),
    ("length_0", file(b"", n=0), ["out of range"], True),
    ("length_1", file(b"{", n=1), ["out of range"], True),
    ("not_utf8", file(b'{"a\xff\xfe": 1}'), ["not UTF-8"], True),
    ("not_json", file('{"a": '), ["not valid JSON"], True),
    ("json_array", file("[]"), ["not a JSON object"], True),
    ("json_number", file("12"), ["not a JSON object"], True),
    ("json_string", file('"hello"'), ["not a JSON object"], True),
    ("json_null", file("null"), ["not a JSON object"], True),
    ("deeply_nested", file("[" * 100_000 + "]" * 100_000), ["not valid JSON"], True),
    ("deeply_nested_in_entry", file('{"a": ' + "[" * 50_000 + "]" * 50_000 + "}"), ["not valid JSON"], True),
    # serde keeps the last of duplicate names: safe_open refuses this one only for the hole it leaves...
    ("duplicate_names", file('{"a": ' + json.dumps(t()) + ', "a": ' + json.dumps(t(offs=(8, 16))) + "}",
                             bytes(16)), ["duplicate", "'a'"], True),
    # ...and accepts this one, silently dropping a tensor of the file
    ("duplicate_names_same_offsets", file('{"a": ' + json.dumps(t()) + ', "a": ' + json.dumps(t("I32")) + "}",
                                          bytes(8)), ["duplicate", "'a'"], False),
    ("unknown_dtype", file({"a": t("F12")}, bytes(8)), ["unknown dtype", "'a'"], True),
    ("dtype_not_string", file({"a": t(["F32"])}, bytes(8)), ["dtype", "'a'"], True),
    ("dtype_number", file({"a": t(7)}, bytes(8)), ["dtype", "'a'"], True),
    ("negative_shape", file({"a": t(shape=(-2,))}, bytes(8)), ["shape", "'a'"], True),
    ("float_shape", file({"a": t(shape=(2.0,))}, bytes(8)), ["shape", "'a'"], True),
    ("bool_shape", file({"a": t(shape=(True, True))}, bytes(8)), ["shape", "'a'"], True),
    ("shape_not_list", file({"a": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, bytes(8)),
     ["shape", "'a'"], True),
    ("huge_int_shape", file('{"a": {"dtype": "F32", "shape": [%s], "data_offsets": [0, 8]}}' % ("9" * 5000),
                            bytes(8)), ["JSON"], True),
    ("shape_overflow", file({"a": t(shape=(2**40, 2**40, 2**40), offs=(0, 8))}, bytes(8)),
     ["shape", "'a'"], True),
    ("size_mismatch", file({"a": t(shape=(3,), offs=(0, 8))}, bytes(8)), ["data_offsets", "need 12"], True),
    ("offsets_reversed", file({"a": t(offs=(8, 0))}, bytes(8)), ["data_offsets", "'a'"], True),
    ("offsets_three", file({"a": t(offs=(0, 8, 16))}, bytes(8)), ["data_offsets", "'a'"], True),
    ("offsets_float", file({"a": t(offs=(0.0, 8.0))}, bytes(8)), ["data_offsets", "'a'"], True),
    ("offsets_negative", file({"a": t(offs=(-8, 0))}, bytes(8)), ["data_offsets", "'a'"], True),
    ("offsets_overlap", file({"a": t(), "b": t(offs=(4, 12))}, bytes(12)), ["'b'", "overlaps"], True),
    ("offsets_hole", file({"a": t(), "b": t(offs=(12, 20))}, bytes(20)), ["'b'", "hole"], True),
    ("offsets_hole_at_start", file({"a": t(offs=(4, 12))}, bytes(12)), ["'a'", "hole"], True),
    ("past_data_area", file({"a": t(), "b": t(offs=(8, 16))}, bytes(12)), ["cover 16", "holds 12"], True),
    ("data_area_too_long", file({"a": t()}, bytes(9)), ["cover 8", "holds 9"], True),
    ("entry_not_object", file({"a": 5}), ["'a'"], True),
    ("entry_missing_key", file({"a": {"dtype": "F32", "shape": [2]}}, bytes(8)), ["'a'"], True),
    ("entry_extra_key", file({"a": {**t(), "extra": 1}}, bytes(8)), ["'a'"], False),
    ("metadata_int_value", file({"__metadata__": {"a": 1}}), ["__metadata__"], True),
    ("metadata_null_value", file({"__metadata__": {"a": None}}), ["__metadata__"], True),
    ("metadata_list", file({"__metadata__": []}), ["__metadata__"], True),
    ("metadata_string", file({"__metadata__": "x"}), ["__metadata__"], True),
    ("metadata_empty_string", file({"__metadata__": ""}), ["__metadata__"], True),
    ("metadata_nested", file({"__metadata__": {"a": {"b": "c"}}}), ["__metadata__"], True),
    # JSON's \ud800 escape decodes (in Python) to a lone surrogate, which no UTF-8 reader accepts
    ("surrogate_in_name", file('{"a\\ud800": ' + json.dumps(t()) + "}", bytes(8)), ["not valid Unicode"], True),
    ("surrogate_in_metadata_value", file('{"__metadata__": {"k": "\\udc00"}}'), ["__metadata__", "Unicode"],
     True),
    ("surrogate_in_metadata_key", file('{"__metadata__": {"\\ud83d": "v"}}'), ["__metadata__", "Unicode"],
     True),
    # dimensions torch cannot hold (int64): safetensors' parser takes the first, its get_tensor fails on it
    ("dim_over_int64", file({"a": t(shape=(0, 2**63), offs=(0, 0))}), ["shape", "2^63-1"], True),
    ("dim_over_usize", file({"a": t(shape=(0, 2**64 + 1), offs=(0, 0))}), ["shape", "2^63-1"], True),
    ("offsets_over_usize", file({"a": t(offs=(2**64, 2**64 + 8))}, bytes(8)), ["data_offsets"], True),
    ("long_hostile_name", file({"x" * 100_000: t(shape=(3,))}, bytes(8)), ["data_offsets", "..."], True),
]
