"""`python -m comfyui_hearth.cli`: the `hearth` command without its console script."""

import sys

from . import main

sys.exit(main())
