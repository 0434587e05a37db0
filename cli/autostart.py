"""`hearth autostart [on|off]`: start the daemon at login (a systemd user unit and an XDG autostart entry).

Files only, no daemon needed: the user may set it up before any daemon ever ran. Exit 0, also when there
was nothing to do; 1 when a file cannot be written (the reason on stderr).
"""

from __future__ import annotations

import argparse
import sys

from ..core import login_units


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("autostart", help="start the daemon at login: on, off, or show whether it does")
    p.add_argument("switch", nargs="?", choices=("on", "off"), help="omit to show the current state")
    p.set_defaults(func=cmd_autostart)


def cmd_autostart(args: argparse.Namespace) -> int:
    try:
        if args.switch == "on":
            lines = login_units.enable()
        elif args.switch == "off":
            lines = login_units.disable()
        else:
            st = login_units.state()
            lines = [f"start at login: {'on' if st['enabled'] else 'off'}"]
            lines += [f"  {what}: {path}" for what, path in (("systemd unit", st["unit"]),
                                                              ("autostart entry", st["desktop"])) if path]
    except OSError as e:
        print(f"hearth: autostart {args.switch}: {e.strerror}: {e.filename}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0
