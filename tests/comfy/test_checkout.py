"""Finding the ComfyUI that the real-ComfyUI tests and benchmarks drive (harness/checkout.py); no ComfyUI needed."""

from __future__ import annotations

from pathlib import Path

from harness.checkout import find_comfyui


def fake_checkout(root: Path, requirements: str) -> Path:
    (root / "comfy").mkdir(parents=True)
    (root / "main.py").write_text("")
    (root / "requirements.txt").write_text(requirements)
    return root


def test_a_checkout_whose_requirements_are_installed_is_found(tmp_path, monkeypatch):
    checkout = fake_checkout(tmp_path / "ComfyUI", "torch\ntorchvision\nsafetensors>=0.4.2\naiohttp\n")
    monkeypatch.setenv("HEARTH_COMFYUI", str(checkout))
    assert find_comfyui() == (checkout.resolve(), f"ComfyUI at {checkout}")


def test_a_checkout_without_its_requirements_is_skipped_with_the_missing_names(tmp_path, monkeypatch):
    # What CI met: a checkout in ~/comfy/ComfyUI whose requirements live in another environment.
    checkout = fake_checkout(tmp_path / "ComfyUI", "safetensors\nno-such-package-hearth>=1.0\n"
                                                   "#non essential dependencies:\nalso-not-installed\n")
    monkeypatch.setenv("HEARTH_COMFYUI", str(checkout))
    path, why = find_comfyui()
    assert path is None
    assert "no-such-package-hearth" in why and "also-not-installed" not in why and "safetensors" not in why


def test_no_checkout_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HEARTH_COMFYUI", str(tmp_path / "nowhere"))
    path, why = find_comfyui()
    assert path is None and str(tmp_path / "nowhere") in why and "HEARTH_COMFYUI" in why
