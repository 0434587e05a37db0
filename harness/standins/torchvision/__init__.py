"""Import-only stand-in for torchvision (no build matches the CPU torch used here): any submodule imports,
any name is a placeholder that raises when used; where the real one is installed, that one is loaded.
See _hearth_standin."""

import sys

from _hearth_standin import install

__version__ = "0.0.0+hearth.standin"
install(sys.modules[__name__])
