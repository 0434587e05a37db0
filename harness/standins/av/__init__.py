"""Import-only stand-in for av (ComfyUI's comfy_api imports it at start-up; a GPU machine may lack it), used
only where no real av is installed: any submodule imports, any name is a placeholder that raises when used.
See _hearth_standin."""

import sys

from _hearth_standin import install

__version__ = "0.0.0+hearth.standin"
install(sys.modules[__name__])
