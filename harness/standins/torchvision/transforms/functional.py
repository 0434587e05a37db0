"""Import-only stand-in for torchvision.transforms.functional (see the package docstring)."""


def __getattr__(name: str):
    raise AttributeError(f"torchvision.transforms.functional stand-in for the Hearth tests has no {name!r}")
