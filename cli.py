"""The `hearth` command: thin argument parsing over the daemon's service API and the client.

Exit codes: 0 success, 1 a refused request (one line on stderr says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from .errors import BadRequest, HearthError
from .state import format_size

def _conn():
    from .client.connection import connect

    return connect(timeout=30.0)


def cmd_daemon(args: argparse.Namespace) -> int:
    from .daemon.main import run

    return run(args.port, headless=args.headless)


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


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(size_mb=args.size_mb)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hearth", description="Hearth: model weights kept warm in shared memory.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("daemon", help="run the daemon (one per user)")
    d.add_argument("--headless", action="store_true", help="no tray icon (servers)")
    d.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default $HEARTH_PORT or 7788; 0: any)")
    d.set_defaults(func=cmd_daemon)

    s = sub.add_parser("status", help="what is cached, budget, hits")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    pl = sub.add_parser("preload", help="fill models into the cache now")
    pl.add_argument("paths", nargs="+", metavar="PATH")
    pl.add_argument("--no-wait", action="store_true", help="queue and return at once")
    pl.set_defaults(func=cmd_preload)

    e = sub.add_parser("evict", help="remove a model (or all) from the cache")
    e.add_argument("path", nargs="?", metavar="PATH")
    e.add_argument("--all", action="store_true")
    e.set_defaults(func=cmd_evict)

    for name, pinned in (("pin", True), ("unpin", False)):
        pp = sub.add_parser(name, help=f"{name} a model (pinned models are never evicted by LRU)")
        pp.add_argument("path", metavar="PATH")
        pp.set_defaults(func=cmd_pin, pinned=pinned)

    c = sub.add_parser("config", help="show or change settings (budget, model_dirs, max_fills, autostart)")
    c.add_argument("key", nargs="?")
    c.add_argument("value", nargs="?")
    c.set_defaults(func=cmd_config)

    dm = sub.add_parser("demo", help="start the daemon, build a sample checkpoint, load it cold and warm")
    dm.add_argument("--size-mb", type=int, default=512)
    dm.set_defaults(func=cmd_demo)

    from .planner.cli import register

    register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s" if args.command == "daemon"
                        else "%(message)s")
    try:
        return args.func(args)
    except HearthError as e:
        print(f"hearth: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
