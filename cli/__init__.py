"""The `hearth` command: thin argument parsing over the daemon's service API and the client.

Exit codes: 0 success, 1 a refused request (one line on stderr says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..core.command import PACK_DIR
from ..core.errors import HearthError
from ..core.version import __version__
from .autostart import register as register_autostart
from .cache import cmd_config, cmd_evict, cmd_pin, cmd_preload, cmd_status
from .daemon import cmd_daemon, cmd_restart, cmd_start, cmd_stop
from .plan import register as register_plan


def build_parser() -> argparse.ArgumentParser:
    # Raw: --version prints the pack's folder on one line, however long (the help formatter would wrap it)
    p = argparse.ArgumentParser(prog="hearth", description="Hearth: model weights kept warm in shared memory.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="version", version=f"hearth {__version__} ({PACK_DIR})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("daemon", help="run the daemon in this terminal (one per user)")
    d.add_argument("--headless", action="store_true", help="no tray icon (servers)")
    d.add_argument("--port", type=int, default=None,
                   help="port on 127.0.0.1 (default $HEARTH_PORT, else 7788 or any free one if that is taken; 0: any)")
    d.set_defaults(func=cmd_daemon)

    st = sub.add_parser("start", help="start the daemon in the background, where none runs")
    st.add_argument("--headless", action="store_true", help="no tray icon (servers)")
    st.set_defaults(func=cmd_start)
    for name, func, what in (("stop", cmd_stop, "stop the daemon (cached models stay for the next one)"),
                             ("restart", cmd_restart, "stop the daemon and start this install's")):
        sp = sub.add_parser(name, help=what)
        sp.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the stop (default 15)")
        if name == "restart":
            sp.add_argument("--headless", action="store_true", help="no tray icon (servers)")
        sp.set_defaults(func=func)

    s = sub.add_parser("status", help="what is cached, budget, hits")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    pl = sub.add_parser("preload", help="fill models into the cache now (files, or what a workflow names)")
    pl.add_argument("paths", nargs="*", metavar="PATH")
    pl.add_argument("--workflow", action="append", default=[], metavar="FILE",
                    help="a saved ComfyUI workflow (UI or API format): preload the models its loaders name")
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

    c = sub.add_parser("config", help="show or change settings (budget, model_dirs, max_fills, start_with_comfyui)")
    c.add_argument("key", nargs="?")
    c.add_argument("value", nargs="?")
    c.set_defaults(func=cmd_config)

    register_plan(sub)
    register_autostart(sub)
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
