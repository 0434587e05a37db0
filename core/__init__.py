"""Facts every room of Hearth shares: where its state lives, its files' formats, sizes, errors, version.

Nothing here imports torch, aiohttp or ComfyUI, and importing it has no side effects: the CLI, the daemon,
the client and the nodes all stand on it.
"""
