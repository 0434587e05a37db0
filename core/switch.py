"""On/off words as users write them in config.json, environment variables and the CLI: one list for all."""

from __future__ import annotations

ON_WORDS = ("1", "true", "yes", "on")
OFF_WORDS = ("0", "false", "no", "off")


def switch(value: object) -> bool | None:
    """True or False for a bool or an on/off word (any case, spaces around), None for anything else."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    return True if word in ON_WORDS else False if word in OFF_WORDS else None
