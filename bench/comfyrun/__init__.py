"""Running a real ComfyUI for Hearth's tests and benchmarks: checkout, stand-ins, models, server, daemon.

Imports nothing of ComfyUI: ComfyUI runs in child processes with the environment built here.
"""
