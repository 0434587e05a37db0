"""The client: runs inside the user's process, asks the daemon for segments, maps them, falls back."""

from .load import Loaded, load, load_state_dict, register_roots, report_strategy

__all__ = ["Loaded", "load", "load_state_dict", "register_roots", "report_strategy"]
