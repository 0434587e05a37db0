"""Fuzzing Hearth's two doors for hostile input: the safetensors header validator and the daemon's HTTP API.

`header` generates .safetensors files and holds Hearth's validator to safetensors' own loader on each;
`api` generates requests to a real daemon and holds every answer to the API's contract. The tests
(tests/test_fuzz.py: a fixed corpus and a short seeded run) and the benchmark (`python -m bench.fuzz`:
100,000 cases per door) run the same generators and the same checks.

Why Hypothesis and not atheris: the bugs worth finding sit behind a well-formed file or request. A header
must be JSON, name known dtypes and tile the data area before the checks of overflow, offsets, metadata
and Unicode are even reached; random bytes, even coverage-guided ones, die at the JSON parse almost always.
Hypothesis builds a valid layout and then mutates a few of its fields (a dimension, an offset, a name, the
length prefix, a byte of the text), so most cases reach the deep checks. It runs inside pytest with a fixed
seed (deterministic, seconds), shrinks a failure to a small example, and is one pure-Python wheel; atheris
needs a libFuzzer build, and its coverage guidance cannot see into safetensors' Rust parser, the reference
the differential runs against, anyway.
"""
