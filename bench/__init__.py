import harness  # noqa: F401 - makes comfyui_hearth this checkout, here and in child processes (harness/pack.py)
