"""`hearth daemon`: run the user's daemon in this process."""

from __future__ import annotations

import argparse


def cmd_daemon(args: argparse.Namespace) -> int:
    from ..daemon.main import run

    return run(args.port, headless=args.headless)
