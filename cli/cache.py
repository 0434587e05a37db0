"""The commands that talk to the running daemon: status, preload, evict, pin, config."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING

from ..core.errors import BadRequest
from ..core.sizes import format_size

if TYPE_CHECKING:  # imported where used: a command that never talks to the daemon starts faster
    from ..client.connection import Connection


def _conn() -> Connection:
    from ..client.connection import connect

    return connect(timeout=30.0)


def cmd_status(args: argparse.Namespace) -> int:
    conn = _conn()
    doc = conn.get("/v1/status")
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"Hearth daemon {doc['version']} (pid {doc['pid']}), up {time.time() - doc['started']:.0f} s")
    print(f"panel: http://127.0.0.1:{conn.port}/#token={conn.token} (in ComfyUI: the Hearth tab of the sidebar)")
    freeing = doc["shm"].get("freeing") or 0
    print(f"cache: {format_size(doc['used'])} of {format_size(doc['budget'])} budget; "
          f"{doc['shm']['dir']}: {format_size(doc['shm']['free'])} free of {format_size(doc['shm']['total'])}"
          + (f", {format_size(freeing)} more being freed (evicted)" if freeing else ""))
    s = doc["stats"]
    print(f"hits {s['hits']}, misses {s['misses']}, fills {s['fills']}, evictions {s['evictions']}")
    warm = doc.get("warm_set")
    if warm:
        print(warm["summary"])
        for skip in warm["skipped"]:
            why = skip["reason"] if skip["path"] in skip["reason"] else f"{skip['path']}: {skip['reason']}"
            print(f"  skipped {why}")
    if doc.get("holds"):
        print(f"kept for {len(doc['holds'])} queued prompt(s)")
    if doc.get("strategy"):
        st = doc["strategy"]
        print(f"last VRAM strategy: {st.get('strategy')} ({st.get('model', '')})")
    if not doc["segments"]:
        print("no models cached")
    fills = {f["key"]: f for f in doc.get("fills", [])}
    for seg in doc["segments"]:
        flags = (" pinned" if seg["pinned"] else "") + (f" held by {seg['holders']}" if seg["holders"] else "")
        state = seg["state"] if seg["state"] != "filling" else f"filling {100 * seg['filled'] // max(seg['size'], 1)}%"
        if seg["state"] == "filling" and (f := fills.get(seg["key"])) and f["state"] == "paused":
            state = state.replace("filling", "paused")
        print(f"  {format_size(seg['size']):>10}  {state:<12} hits {seg['hits']:<4}{flags}  {seg['path']}")
    return 0


def _reason(path: str, message: str) -> str:
    return f"hearth: {message}" if path in message else f"hearth: {path}: {message}"


def _progress(conn: Connection, queued: list[dict]) -> int:
    """Wait until every queued file is ready or failed, saying which on stderr; count failures. On a terminal
    one bar shows the bytes filled of them all, named after the file being filled.

    A file is waited for while the daemon lists its key as pending (waiting for a fill slot or filling);
    after that it is either ready or has a failure with its reason.
    """
    from .progress import Progress  # tqdm (~50 ms) only for a command that waits

    if not queued:
        return 0
    pending = {q["key"]: q["path"] for q in queued}
    sizes = {q["key"]: q["size"] for q in queued}
    done: dict[str, int] = {}  # bytes filled per file; a file ready or failed counts whole
    failed = 0
    with Progress(sum(sizes.values())) as bar:
        while pending:
            doc = conn.get("/v1/status")
            segs = {s["key"]: s for s in doc["segments"] if s["state"] != "stale"}
            failures = {f["key"]: f for f in doc.get("failures", [])}
            in_flight = set(doc.get("pending", []))
            filling = []
            for key, path in sorted(pending.items(), key=lambda kv: kv[1]):
                s = segs.get(key)
                if s is not None and s["state"] == "ready":
                    line = f"ready {path}"
                elif key in in_flight:
                    if s is not None:
                        done[key] = s["filled"]
                        filling.append(os.path.basename(path))
                    continue
                else:
                    failed += 1
                    f = failures.get(key)
                    line = _reason(path, f["message"] if f else "left the cache before it was ready (see the log)")
                done[key] = sizes[key]
                del pending[key]
                bar.say(line)
            label = filling[0] + (f" and {len(filling) - 1} more" if len(filling) > 1 else "") if filling else None
            bar.update(sum(done.values()), label)
            if pending:
                time.sleep(0.2)
    return failed


def cmd_preload(args: argparse.Namespace) -> int:
    if not args.paths and not args.workflow:
        print("hearth preload: give a PATH or --workflow FILE", file=sys.stderr)
        return 2
    conn = _conn()
    paths = [os.path.abspath(p) for p in args.paths]
    missing: list[str] = []
    for wf in args.workflow:
        found, lost = _workflow_files(conn, wf)
        paths += [p for p in found if p not in paths]
        missing += lost
    answer = conn.post("/v1/preload", {"paths": paths}) if paths else {"queued": [], "refused": []}
    for r in answer["refused"]:
        print(_reason(r["path"], r["message"]), file=sys.stderr)
    failed = 0 if args.no_wait else _progress(conn, answer["queued"])
    for name in missing:  # on stdout, one per line: what a script would read
        print(name)
    if missing:
        print(f"hearth: {len(missing)} model(s) of the workflow not found under the allowed folders "
              f"(`hearth config model_dirs`, HEARTH_MODEL_DIRS, or the folders a running ComfyUI registers)",
              file=sys.stderr)
    return 1 if answer["refused"] or failed or missing else 0


def _workflow_files(conn: Connection, workflow: str) -> tuple[list[str], list[str]]:
    """(files to preload, names not found) of what a workflow's loaders name; ambiguities and pickles are
    said on stderr."""
    from ..core.model_files import is_pickle
    from ..core.workflow import WorkflowError, models_in, read_workflow
    from .workflow import locate

    try:
        refs = models_in(read_workflow(workflow))
    except OSError as e:
        raise BadRequest(f"{workflow}: {e.strerror}") from None
    except WorkflowError as e:
        raise BadRequest(f"{workflow}: {e}") from None
    roots = conn.get("/v1/roots")["roots"]
    paths, missing = [], []
    for ref in refs:
        found = locate(ref, roots)
        if not found.paths:
            missing.append(found.label)
        elif is_pickle(ref.name):
            print(f"hearth: {found.label} is a pickle: not cached (ComfyUI loads it as usual)",
                  file=sys.stderr)
        else:
            if len(found.paths) > 1:
                print(f"hearth: {found.label} is ambiguous; preloading each of {', '.join(found.paths)}",
                      file=sys.stderr)
            paths += found.paths
    if not refs:
        print(f"hearth: {workflow} names no model file a known loader reads", file=sys.stderr)
    return paths, missing


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
    sources = doc.get("sources", {})  # the settings, and where each value in effect comes from
    if args.key and args.value is None:
        if args.key not in sources:
            print(f"hearth config: unknown setting {args.key!r}", file=sys.stderr)
            return 2
        print(json.dumps(doc[args.key]))  # the value alone: what a script reads
        return 0
    for k in sorted(sources):
        print(f"{k} = {json.dumps(doc[k])}  ({_in_effect(k, doc)})")
    return 0


def _in_effect(key: str, doc: dict) -> str:
    """Where a setting's value comes from, and what it amounts to where that is not the value itself."""
    where = doc["sources"][key]
    if key == "budget":
        return f"{where}; {format_size(doc['budget_bytes'])} in effect"
    if key == "model_dirs":
        roots = doc.get("roots_in_effect", {})
        allowed = ", ".join(f"{path} ({origin})" for path, origin in sorted(roots.items()))
        return f"{where}; allowed folders in effect: {allowed or 'none'}"
    return where
