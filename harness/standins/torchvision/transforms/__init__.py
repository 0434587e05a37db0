"""Import-only stand-in for torchvision.transforms (see the package docstring)."""


def __getattr__(name: str):
    raise AttributeError(f"torchvision.transforms stand-in for the Hearth tests has no {name!r}")
