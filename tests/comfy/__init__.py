"""Tests against a real ComfyUI. A package so that its conftest and helpers never shadow the suite's own
`conftest` module, which other test modules import by that name."""
