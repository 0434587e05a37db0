"""Fuzz benchmark: N cases against each of Hearth's two doors for hostile input; crashes and hangs counted.

    python -m bench.fuzz --cases 100000          # 100,000 headers and 100,000 requests (minutes)
    python -m bench.fuzz --cases 2000 --only header --seed 7

Doors (generators and checks in harness/fuzz/, the same the tests run; why Hypothesis there):
- header: every case a .safetensors file, held to the stock `safetensors.torch.load_file` by
  harness.fuzz.header.check: no exception but BadHeader, nothing accepted that the stock load refuses, no
  tensor or metadata that differs from the stock load's, every refusal one line naming the file.
- api: every case a request to one real daemon on loopback (several client processes at once), held to
  the API's contract by harness.fuzz.api: no 5xx but 502 and 507, no "internal" error, an answer within 20 s,
  acquired segments byte-exact; the daemon answers its health route every 250 cases; after the run its
  cache is emptied and nothing may remain (tmpfs names, descriptors).

Workers are separate processes, each with its own seed, in batches of fresh Hypothesis runs; a watchdog
(faulthandler) ends a worker whose case runs past the hang limit, with the case left on disk. Cases that
broke a property are kept under bench/out/fuzz/ (the header as a file, the request as JSON). `--corpus DIR`
keeps the first case of every outcome (the fixed corpus of tests/fuzz_corpus/ came from there).
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out" / "fuzz"
BATCH = 2000  # cases per Hypothesis run: its bookkeeping of one run grows with the cases it has made
HANG_S = 30.0


def _batches(strategy, cases: int, seed: int, one) -> None:
    """Run `one(example)` on `cases` examples of `strategy`, generated (not shrunk) in seeded batches."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as with_seed

    for b, start in enumerate(range(0, cases, BATCH)):
        n = min(BATCH, cases - start)

        @with_seed(seed * 100_000 + b)
        @settings(max_examples=n, phases=[Phase.generate], database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def run(example) -> None:
            one(example)

        run()


class Tally:
    """A worker's counts: cases, outcomes, violations by kind, kept to a JSON file after every batch."""

    def __init__(self, path: Path):
        self.path, self.cases, self.outcomes, self.violations = path, 0, collections.Counter(), []
        self.t0 = time.monotonic()

    def add(self, outcome: str) -> None:
        self.cases += 1
        self.outcomes[outcome] += 1
        if self.cases % 500 == 0:
            self.save()

    def violation(self, kind: str, detail: str, kept: str) -> None:
        self.cases += 1
        self.violations.append({"kind": kind, "detail": detail[:500], "case": kept})

    def save(self) -> None:
        doc = {"cases": self.cases, "seconds": time.monotonic() - self.t0, "outcomes": dict(self.outcomes),
               "violations": self.violations}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path)


def header_worker(args) -> None:
    from harness.fuzz.header import Violation, check, files, slug

    work = Path(args.dir)
    case = work / f"case-{args.seed}.safetensors"  # the case under way: what a hang leaves behind
    corpus = Path(args.corpus) if args.corpus else None
    kept_classes: set[str] = set()
    tally = Tally(work / f"header-{args.seed}.json")

    def one(data: bytes) -> None:
        faulthandler.dump_traceback_later(HANG_S, exit=True)
        try:
            outcome = check(data, case)
        except Violation as v:
            kept = work / "violations" / f"{v.kind}-{args.seed}-{tally.cases}.safetensors"
            kept.parent.mkdir(exist_ok=True)
            kept.write_bytes(data)
            tally.violation(v.kind, v.detail, str(kept))
            return
        finally:
            faulthandler.cancel_dump_traceback_later()
        tally.add(outcome)
        if corpus is not None and outcome not in kept_classes:
            kept_classes.add(outcome)
            (corpus / f"{slug(outcome)}.safetensors").write_bytes(data)

    _batches(files(), args.cases, args.seed, one)
    tally.save()


def api_worker(args) -> None:
    from harness.fuzz.api import Target, Violation, requests

    work = Path(args.dir)
    info = json.loads((Path(args.home) / "daemon.json").read_text())
    target = Target(info["port"], (Path(args.home) / "token").read_text().strip(), info["pid"],
                    Path(args.models), Path(args.outside), Path(args.shm), worker=f"w{args.seed}")
    case = work / f"case-api-{args.seed}.json"
    tally = Tally(work / f"api-{args.seed}.json")
    kept_classes: set[tuple] = set()

    def one(req) -> None:
        case.write_text(json.dumps(req.describe()))
        faulthandler.dump_traceback_later(HANG_S, exit=True)
        try:
            outcome = target.send(req)
            tally.add(outcome)
            if args.corpus and (cls := (req.target.split("?")[0], req.method, outcome)) not in kept_classes:
                kept_classes.add(cls)
                with open(Path(args.corpus) / f"api-{args.seed}.jsonl", "a") as f:
                    f.write(json.dumps({"outcome": outcome, "request": req.describe()}) + "\n")
            if tally.cases % 250 == 0:
                target.serving()
        except Violation as v:
            kept = work / "violations" / f"api-{v.kind}-{args.seed}-{tally.cases}.json"
            kept.parent.mkdir(exist_ok=True)
            shutil.copy(case, kept)
            tally.violation(v.kind, v.detail, str(kept))
        finally:
            faulthandler.cancel_dump_traceback_later()

    _batches(requests(), args.cases, args.seed, one)
    (work / f"leases-{args.seed}.json").write_text(json.dumps(sorted(target.leases)))
    tally.save()


def _spawn(kind: str, seed: int, cases: int, work: Path, extra: list[str]) -> subprocess.Popen:
    log = open(work / f"{kind}-{seed}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "bench.fuzz", "--worker", kind, "--seed", str(seed),
                             "--cases", str(cases), "--dir", str(work), *extra],
                            cwd=BENCH.parent, stdout=log, stderr=subprocess.STDOUT)


def _collect(kind: str, procs: dict[int, subprocess.Popen], work: Path) -> dict:
    total = {"cases": 0, "seconds": 0.0, "outcomes": collections.Counter(), "violations": [], "hangs": 0,
             "worker_exits": []}
    for seed, proc in procs.items():
        rc = proc.wait()
        log = (work / f"{kind}-{seed}.log").read_text(errors="replace")
        path = work / f"{kind}-{seed}.json"
        doc = json.loads(path.read_text()) if path.exists() else {"cases": 0, "seconds": 0, "outcomes": {},
                                                                  "violations": []}
        if rc != 0:
            hang = "Timeout (" in log  # faulthandler's watchdog: a case ran past HANG_S
            total["hangs"] += hang
            total["violations"].append({"kind": "hang" if hang else "worker_died", "detail": log[-2000:],
                                        "case": str(work / (f"case-{seed}.safetensors" if kind == "header"
                                                            else f"case-api-{seed}.json"))})
        total["worker_exits"].append(rc)
        total["cases"] += doc["cases"]
        total["seconds"] = max(total["seconds"], doc["seconds"])
        total["outcomes"].update(doc["outcomes"])
        total["violations"] += doc["violations"]
        total["hangs"] += sum(v["kind"] == "hang" for v in doc["violations"])
    return total


def run_header(cases: int, workers: int, seed: int, work: Path, corpus: str | None) -> dict:
    extra = ["--corpus", corpus] if corpus else []
    t0 = time.monotonic()
    procs = {seed + i: _spawn("header", seed + i, cases // workers + (i < cases % workers), work, extra)
             for i in range(workers)}
    total = _collect("header", procs, work)
    total["wall_s"] = time.monotonic() - t0
    return total


def run_api(cases: int, workers: int, seed: int, work: Path, corpus: str | None) -> dict:
    from harness.daemon import Daemon
    from harness.fuzz.api import Target, Violation

    root = Path(tempfile.mkdtemp(prefix="hearth-fuzz-"))
    models, outside = root / "models", root / "outside"
    models.mkdir()
    Target.prepare(models, outside)
    shm = Path("/dev/shm") / f"hearth-fuzz-{os.getpid()}"
    daemon = Daemon(root / "home", [models], shm_dir=shm).start()
    info = json.loads((root / "home" / "daemon.json").read_text())
    probe = Target(info["port"], (root / "home" / "token").read_text().strip(), info["pid"], models, outside, shm)
    try:
        probe.api("POST", "/v1/acquire", {"path": str(models / "m0.safetensors")})  # warm: threads, index
        probe.drain(10**6)  # ends a moment after its last request, as drain counts
        baseline = len(probe.fds())
        extra = ["--home", str(root / "home"), "--models", str(models), "--outside", str(outside), "--shm", str(shm),
                 *(["--corpus", corpus] if corpus else [])]
        t0 = time.monotonic()
        procs = {seed + i: _spawn("api", seed + i, cases // workers + (i < cases % workers), work, extra)
                 for i in range(workers)}
        total = _collect("api", procs, work)
        total["wall_s"] = time.monotonic() - t0
        total["daemon_alive"] = daemon.proc.poll() is None
        for s in procs:
            leases = work / f"leases-{s}.json"
            if leases.exists():
                probe.leases.update(tuple(x) for x in json.loads(leases.read_text()))
        try:
            probe.serving()
            probe.drain(baseline)
            total["leaks"] = 0
        except Violation as v:
            total["leaks"] = 1
            total["violations"].append({"kind": v.kind, "detail": v.detail, "case": "after the run"})
        total["fds"] = {"before": baseline, "after": len(probe.fds())}
    finally:
        daemon.stop()
        log = (root / "home" / "daemon.log")
        text = log.read_text(errors="replace") if log.exists() else ""
        total["daemon_exit"] = daemon.proc.returncode
        total["daemon_internal"] = text.count("hearth.http ERROR internal error")
        total["aiohttp_unhandled"] = text.count("aiohttp.server ERROR Unhandled exception")
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    return total


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    import hypothesis
    import safetensors

    return (f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}, "
            f"safetensors {safetensors.__version__}, hypothesis {hypothesis.__version__}; load average before "
            f"{os.getloadavg()[0]:.2f}")


def report(results: dict) -> str:
    lines = ["| door | cases | crashes | hangs | other violations | wall time | cases/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for door, r in results.items():
        crashes = sum(v["kind"] in ("crash", "internal", "worker_died", "down") for v in r["violations"])
        other = len(r["violations"]) - crashes - r["hangs"]
        lines.append(f"| {door} | {r['cases']:,} | {crashes} | {r['hangs']} | {other} | {r['wall_s']:.0f} s | "
                     f"{r['cases'] / max(r['wall_s'], 1e-9):.0f} |")
    for door, r in results.items():
        lines.append(f"\n{door}: {len(r['outcomes'])} distinct outcomes; the most frequent:")
        for outcome, n in r["outcomes"].most_common(12):
            lines.append(f"- {n:,} {outcome}")
        if door == "api":
            lines.append(f"- daemon alive after the run: {r['daemon_alive']}, exit code on SIGTERM: "
                         f"{r['daemon_exit']}, internal errors in its log: {r['daemon_internal']} (aiohttp's own "
                         f"'Unhandled exception' for bodies it could not decode: {r['aiohttp_unhandled']}), "
                         f"leaks after "
                         f"emptying the cache: {r['leaks']} (daemon descriptors {r['fds']['before']} before, "
                         f"{r['fds']['after']} after)")
        for v in r["violations"][:20]:
            lines.append(f"- VIOLATION {v['kind']}: {v['detail'][:300]} (case: {v['case']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=100_000, help="cases per door")
    p.add_argument("--workers", type=int, default=2, help="processes per door (the API's share one daemon)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--only", choices=["header", "api"])
    p.add_argument("--corpus", help="keep the first case of every outcome in this folder (headers as files, "
                                    "requests as JSON lines)")
    p.add_argument("--worker", choices=["header", "api"], help=argparse.SUPPRESS)
    for internal in ("--dir", "--home", "--models", "--outside", "--shm"):
        p.add_argument(internal, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "header":
        header_worker(args)
        return 0
    if args.worker == "api":
        api_worker(args)
        return 0

    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=OUT))
    if args.corpus:
        Path(args.corpus).mkdir(parents=True, exist_ok=True)
    print(f"# fuzz run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, seed {args.seed}, {args.cases:,} "
          f"cases per door, {args.workers} workers per door\n# {machine()}\n# work folder {work}", flush=True)
    results = {}
    if args.only in (None, "header"):
        results["header"] = run_header(args.cases, args.workers, args.seed, work, args.corpus)
        print(f"# header door done in {results['header']['wall_s']:.0f} s", flush=True)
    if args.only in (None, "api"):
        results["api"] = run_api(args.cases, args.workers, args.seed, work, args.corpus)
    print(f"# load average after {os.getloadavg()[0]:.2f}")
    print(report(results))
    (work / "results.json").write_text(json.dumps(results, default=lambda o: dict(o)))
    return 1 if any(r["violations"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
