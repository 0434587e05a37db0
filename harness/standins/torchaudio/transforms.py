"""Import-only stand-in for torchaudio.transforms (see the package docstring)."""


def __getattr__(name: str):
    raise AttributeError(f"torchaudio.transforms stand-in for the Hearth tests has no {name!r}")
