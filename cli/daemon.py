"""The daemon's life cycle from the command line: `daemon` (run it here), `start`, `stop`, `restart`."""

from __future__ import annotations

import argparse
import os
import signal
import time

from ..core.errors import DaemonUnavailable, HearthError
from ..core.home import hearth_home


def cmd_daemon(args: argparse.Namespace) -> int:
    from ..daemon.main import run

    return run(args.port, headless=args.headless)


def cmd_start(args: argparse.Namespace) -> int:
    """Start the daemon detached, where none runs; it outlives this command."""
    from ..client.connection import connect
    from ..client.spawn import start_daemon

    try:
        conn = connect(timeout=5.0)
        print(f"the Hearth daemon is already running (pid {conn.pid}, port {conn.port})")
        return 0
    except DaemonUnavailable:
        pass
    start_daemon(headless=args.headless)
    conn = connect(timeout=5.0)
    print(f"started the Hearth daemon {conn.version} (pid {conn.pid}, port {conn.port}); "
          f"its log: {hearth_home() / 'daemon.log'}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the daemon; its segments stay in shared memory and the next daemon re-adopts them."""
    from ..client.connection import connect
    from ..client.spawn import lock_holder, wait_stopped

    pid = lock_holder()
    if pid is None:
        print("the Hearth daemon is not running")
        return 0
    print(f"stopping the Hearth daemon (pid {pid})")
    t0 = time.monotonic()
    try:
        connect(timeout=5.0, check=False).post("/v1/shutdown", {})
    except HearthError:  # stopping already, or not answering: the signal does what the request would
        if pid > 0:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    if not wait_stopped(timeout=args.timeout):
        raise DaemonUnavailable(f"the daemon (pid {pid}) did not stop within {args.timeout:.0f} s")
    print(f"stopped in {time.monotonic() - t0:.1f} s")
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    """Stop the running daemon (if any) and start this install's: how an updated pack takes over."""
    cmd_stop(args)
    return cmd_start(args)
