"""Import-only stand-in for torchvision (no build matches the CPU torch used here).

ComfyUI imports torchvision at start-up for models the Hearth tests never run; any attribute use raises.
"""

__version__ = "0.0.0+hearth.standin"


def __getattr__(name: str):
    raise AttributeError(f"torchvision stand-in for the Hearth tests has no {name!r}")
