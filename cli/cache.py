"""The commands that talk to the running daemon: status, preload, evict, pin, config."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..core.errors import BadRequest
from ..core.sizes import format_size


def _conn():
    from ..client.connection import connect

    return connect(timeout=30.0)


def cmd_status(args: argparse.Namespace) -> int:
    doc = _conn().get("/v1/status")
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"Hearth daemon {doc['version']} (pid {doc['pid']}), up {time.time() - doc['started']:.0f} s")
    print(f"cache: {format_size(doc['used'])} of {format_size(doc['budget'])} budget; "
          f"{doc['shm']['dir']}: {format_size(doc['shm']['free'])} free of {format_size(doc['shm']['total'])}")
    s = doc["stats"]
    print(f"hits {s['hits']}, misses {s['misses']}, fills {s['fills']}, evictions {s['evictions']}")
    if doc.get("strategy"):
        st = doc["strategy"]
        print(f"last VRAM strategy: {st.get('strategy')} ({st.get('model', '')})")
    if not doc["segments"]:
        print("no models cached")
    for seg in doc["segments"]:
        flags = (" pinned" if seg["pinned"] else "") + (f" held by {seg['holders']}" if seg["holders"] else "")
        state = seg["state"] if seg["state"] != "filling" else f"filling {100 * seg['filled'] // max(seg['size'], 1)}%"
        print(f"  {format_size(seg['size']):>10}  {state:<12} hits {seg['hits']:<4}{flags}  {seg['path']}")
    return 0


def _reason(path: str, message: str) -> str:
    return f"hearth: {message}" if path in message else f"hearth: {path}: {message}"


def _progress(conn, queued: list[dict]) -> int:
    """Draw a bar for the file being filled until every queued file is ready or failed; count failures.

    A file is waited for while the daemon lists its key as pending (waiting for a fill slot or filling);
    after that it is either ready or has a failure with its reason.
    """
    pending = {q["key"]: q["path"] for q in queued}
    tty = sys.stderr.isatty()
    failed, bar_drawn = 0, False
    while pending:
        doc = conn.get("/v1/status")
        segs = {s["key"]: s for s in doc["segments"] if s["state"] != "stale"}
        failures = {f["key"]: f for f in doc.get("failures", [])}
        in_flight = set(doc.get("pending", []))
        for key, path in sorted(pending.items(), key=lambda kv: kv[1]):
            s = segs.get(key)
            if s is not None and s["state"] == "ready":
                line = f"ready {path}"
            elif key in in_flight:
                if tty and s is not None:
                    frac = s["filled"] / max(s["size"], 1)
                    print(f"\r[{'#' * int(30 * frac):<30}] {100 * frac:5.1f}% {os.path.basename(path)}",
                          end="", file=sys.stderr, flush=True)
                    bar_drawn = True
                continue
            else:
                failed += 1
                f = failures.get(key)
                line = _reason(path, f["message"] if f else "left the cache before it was ready (see the log)")
            del pending[key]
            print(("\r\033[K" if bar_drawn else "") + line, file=sys.stderr)
            bar_drawn = False
        if pending:
            time.sleep(0.2)
    return failed


def cmd_preload(args: argparse.Namespace) -> int:
    conn = _conn()
    answer = conn.post("/v1/preload", {"paths": [os.path.abspath(p) for p in args.paths]})
    for r in answer["refused"]:
        print(_reason(r["path"], r["message"]), file=sys.stderr)
    failed = 0 if args.no_wait else _progress(conn, answer["queued"])
    return 1 if answer["refused"] or failed else 0


def cmd_evict(args: argparse.Namespace) -> int:
    if not args.all and not args.path:
        print("hearth evict: give a PATH or --all", file=sys.stderr)
        return 2
    body = {"all": True} if args.all else {"path": os.path.abspath(args.path)}
    answer = _conn().post("/v1/evict", body)
    for e in answer["evicted"]:
        print(f"evicted {e['path']} ({format_size(e['size'])})")
    for e in answer["pending"]:
        print(f"evicted {e['path']}; its {format_size(e['size'])} return when its {len(e['holders'])} "
              f"holder(s) {e['holders']} let go")
    for e in answer.get("filling", []):
        print(f"hearth: {e['path']} is being filled; evict it when it is ready", file=sys.stderr)
    return 1 if answer.get("filling") and not args.all else 0


def cmd_pin(args: argparse.Namespace) -> int:
    answer = _conn().post("/v1/pin", {"path": os.path.abspath(args.path), "pinned": args.pinned})
    print(f"{'pinned' if args.pinned else 'unpinned'} {answer['path']}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    conn = _conn()
    if args.value is not None:
        value = args.value
        if args.key in ("model_dirs", "pinned"):
            value = [os.path.abspath(v) for v in value.split(os.pathsep)]
        try:
            doc = conn.post("/v1/config", {args.key: value})
        except BadRequest as e:  # an unknown setting or a bad value is bad usage, as `config KEY` says
            print(f"hearth config: {e.message}", file=sys.stderr)
            return 2
    else:
        doc = conn.get("/v1/config")
    if args.key and args.value is None:
        if args.key not in doc:
            print(f"hearth config: unknown setting {args.key!r}", file=sys.stderr)
            return 2
        print(json.dumps(doc[args.key]))
    else:
        for k, v in sorted(doc.items()):
            print(f"{k} = {json.dumps(v)}")
    return 0
