"""Import-only stand-in for torchaudio (no build matches the CPU torch used here).

ComfyUI imports torchaudio at start-up for audio models the Hearth tests never run; any attribute use raises.
"""

__version__ = "0.0.0+hearth.standin"


def __getattr__(name: str):
    raise AttributeError(f"torchaudio stand-in for the Hearth tests has no {name!r}")
