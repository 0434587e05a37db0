"""Fuzzing in the suite: a fixed corpus and a short seeded run of each door, in seconds.

Fuzzer: Hypothesis, for structured generation that reaches the deep header checks and for its pytest
integration (harness/fuzz/__init__.py says why not atheris). The generators and the properties are the
benchmark's (`python -m bench.fuzz --cases 100000`, figures in bench/RESULTS.md):
- headers: every file is held to the stock `safetensors.torch.load_file` (harness.fuzz.header.check): no
  exception but BadHeader, no tensor served from a file the stock load refuses, not one bit of difference
  in what it accepts, every refusal one line naming the file;
- the daemon's API, on a real daemon: no 5xx but 502 and 507, no "internal" error, an answer within 20 s,
  acquired segments byte-exact, the daemon still serving, and after the cache is emptied no name left in
  its tmpfs folder and no more descriptors than before.

The corpus (tests/fuzz_corpus/) is what bench.fuzz --corpus kept from a 20,000-case run: the first header
file of every outcome (its name says the outcome) and the first request of every route and outcome;
`api.json` also holds the requests that found bugs (each now a test of test_daemon_api too).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `import harness` (see tests/comfy/__init__.py)
    sys.path.insert(0, _ROOT)

from conftest import Daemon  # noqa: E402
from harness.fuzz import api, header  # noqa: E402

CORPUS = Path(__file__).parent / "fuzz_corpus"
HEADER_FILES = sorted((CORPUS / "headers").glob("*.safetensors"))
API = json.loads((CORPUS / "api.json").read_text())

# Deterministic (derandomize) and short; a case slower than 5 s is reported, as the benchmark's hang limit
SHORT = settings(max_examples=250, derandomize=True, database=None, deadline=timedelta(seconds=5),
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])


# ---- headers ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "case.safetensors"


@pytest.mark.parametrize("path", HEADER_FILES, ids=[p.stem[:60] for p in HEADER_FILES])
def test_header_corpus(path, scratch):
    """Each kept file gets the verdict it got when it was kept: accepted or refused, by whom, and the stock
    load's verdict (its name starts with that; the check's own words may change)."""
    outcome = header.check(path.read_bytes(), scratch)
    assert path.stem.startswith(header.verdict(outcome)), (outcome, path.name)


def test_header_corpus_holds_every_verdict():
    assert HEADER_FILES and any(p.stem == "accept" for p in HEADER_FILES), HEADER_FILES
    for v in ("refuse_hearth_s_parser_stock_refuses", "refuse_hearth_s_parser_stock_accepts",
              "refuse_safetensors_parser_only_stock_refuses", "accept_not_mappable_stock_refuses"):
        assert any(p.stem.startswith(v) for p in HEADER_FILES), v


@SHORT
@given(data=header.files())
def test_header_fuzz_short(data, scratch):
    header.check(data, scratch)


# ---- the daemon's API -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A real daemon with the files the requests name, and its descriptor count once warm."""
    root = tmp_path_factory.mktemp("fuzz-api")
    d = Daemon(root)
    outside = root / "outside"
    api.Target.prepare(d.models, outside)
    d.start()
    t = api.Target(d.port, d.token, d.proc.pid, d.models, outside, d.shm)
    t.api("POST", "/v1/acquire", {"path": str(d.models / "m0.safetensors")})  # warm: fill threads, index
    t.drain(10**6)  # ends a moment after its last request, as drain counts
    t.baseline = len(t.fds())
    yield t
    d.cleanup()


@pytest.mark.parametrize("case", API["found"], ids=[f"found{i}" for i in range(len(API["found"]))])
def test_api_requests_that_found_bugs(case, target):
    """Requests that once broke the daemon (a 500, or a hang of the harness) now pass every check."""
    target.send(api.Request.described(case["request"]))


def test_api_corpus(target):
    for case in API["sampled"]:
        target.send(api.Request.described(case["request"]))
    target.serving()
    target.drain(target.baseline)


@SHORT
@given(req=api.requests())
def test_api_fuzz_short(req, target):
    target.send(req)


def test_api_fuzz_left_nothing_behind(target):
    """After the fuzzed requests of this module: the daemon serves, and an emptied cache leaves nothing."""
    target.serving()
    target.drain(target.baseline)
    assert os.listdir(target.shm) == []
