"""`hearth detect` and `hearth plan`. Handlers return 0 ok, 1 refused (reason on stderr), 2 bad usage."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap

from ..core.errors import HearthError
from ..core.safetensors_format import DTYPES
from ..core.sizes import GiB, format_size, parse_size
from ..planner.detect import Hardware, detect
from ..planner.plan import LADDER, ModelSpec, Plan, model_spec_from_file, plan
from ..planner.work import FAMILIES, Work

# --dtype for a SIZE: the weights' safetensors dtype
_DTYPE_NAMES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16", "fp8": "F8_E4M3"}


def register(subparsers) -> None:
    """Add `detect` and `plan` to the `hearth` command's subparsers."""
    p = subparsers.add_parser("detect", help="show this machine's GPUs, RAM, /dev/shm and CPU cores")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_detect)

    p = subparsers.add_parser(
        "plan", help="plan how a model runs on this machine or on one you describe",
        description="GB means GiB (2^30 bytes) throughout, as nvidia-smi and ComfyUI count. "
                    "Values not given are this machine's.")
    p.add_argument("model", metavar="MODEL_OR_SIZE", help="a .safetensors file, or GB of weights")
    p.add_argument("--vram", type=_gb, metavar="GB", help="free VRAM of the GPU to plan for (0: no GPU)")
    p.add_argument("--ram", type=_gb, metavar="GB", help="available RAM")
    p.add_argument("--cc", type=_cc, metavar="X.Y", help="CUDA compute capability (FP8 needs 8.9+)")
    p.add_argument("--budget", type=_gb, metavar="GB", help="the most VRAM Hearth may use")
    p.add_argument("--reserve", type=_gb, metavar="GB", help="VRAM kept free for everything else (default 1)")
    p.add_argument("--strategy", choices=("auto",) + LADDER, default="auto", help="check this strategy only")
    p.add_argument("--dtype", choices=tuple(_DTYPE_NAMES), default="fp16", help="weight type, for a SIZE")
    p.add_argument("--kind", choices=("diffusion", "text_encoder"), default="diffusion",
                   help="for a SIZE: text encoders stay 16-bit on CPU, diffusion models become fp32")
    p.add_argument("--family", choices=tuple(FAMILIES), help="model family: sizes the sampling workspace")
    p.add_argument("--width", type=int, help="image width in pixels (with --height: the work planned for)")
    p.add_argument("--height", type=int, help="image height in pixels")
    p.add_argument("--batch", type=int, default=1, help="images per batch (default 1)")
    p.add_argument("--frames", type=int, default=1, help="video frames (default 1: an image)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plan)


def _gb(text: str) -> int:
    """A size for --vram and the like: a bare number is GB (GiB), '512M' and '1.5G' work too."""
    try:
        return parse_size(text, unit=GiB)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cc(text: str) -> tuple[int, int]:
    major, dot, minor = text.partition(".")
    if not (major.isdigit() and dot and minor.isdigit()):
        raise argparse.ArgumentTypeError(f"compute capability is X.Y, like 8.9: {text!r}")
    return int(major), int(minor)


def cmd_detect(args: argparse.Namespace) -> int:
    hw = detect()
    if args.json:
        print(json.dumps(hw.to_dict(), indent=2))
        return 0
    for a in hw.accelerators:
        cc = f", compute capability {a.compute_capability[0]}.{a.compute_capability[1]}" \
            if a.compute_capability else ""
        print(f"GPU {a.index}    {a.name} ({a.kind}): {format_size(a.vram_total)} total, {format_size(a.vram_free)} free{cc}, "
              f"FP8 {_yes(a.fp8)}, BF16 {_yes(a.bf16)}")
    if not hw.accelerators:
        print("GPU      none (CPU only)")
    print(f"RAM      {format_size(hw.ram_total)} total, {format_size(hw.ram_available)} available")
    print(f"/dev/shm {format_size(hw.shm_total)} total, {format_size(hw.shm_free)} free")
    print(f"CPU      {hw.cpu_cores} cores")
    for note in hw.notes:
        print(f"note: {note}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    if args.cc is not None and args.vram is None:
        print("hearth plan: --cc describes the GPU given by --vram", file=sys.stderr)
        return 2
    if os.path.exists(args.model):
        try:
            model = model_spec_from_file(args.model)
        except (OSError, ValueError, HearthError) as exc:
            print(f"hearth plan: {exc}", file=sys.stderr)
            return 1
    else:
        try:
            size = parse_size(args.model, unit=GiB)
            if size <= 0:
                raise ValueError
            model = ModelSpec(size, DTYPES[_DTYPE_NAMES[args.dtype]].size, args.kind,
                              f"{format_size(size)} of {args.dtype} weights")
        except ValueError:
            print(f"hearth plan: {args.model!r} is neither a file nor a positive size in GB", file=sys.stderr)
            return 2
    try:
        work = Work(args.width, args.height, args.batch, args.frames) if args.width or args.height else None
    except (TypeError, ValueError):
        print("hearth plan: --width and --height go together, as positive numbers of pixels", file=sys.stderr)
        return 2
    if args.family:
        model = dataclasses.replace(model, family=FAMILIES[args.family])
    hw = _hardware(args)
    try:
        result = plan(model, hw, budget=args.budget, reserve=args.reserve, strategy=args.strategy, work=work)
    except HearthError as exc:
        print(f"hearth plan: {exc.code}: {exc.message}", file=sys.stderr)
        if args.json:
            print(json.dumps(exc.to_dict(), indent=2))
        return 1
    if args.json:
        print(json.dumps({"model": dataclasses.asdict(model) | {"params": model.params},
                          "hardware": hw.to_dict(), "plan": result.to_dict()}, indent=2))
    else:
        _print_plan(model, hw, result)
    return 0


def _hardware(args: argparse.Namespace) -> Hardware:
    """This machine, with what --vram/--cc and --ram say in place of what was detected."""
    if args.vram is not None and args.ram is not None:
        return Hardware.profile(args.vram, args.ram, args.cc)
    hw = detect()
    if args.vram is not None:
        hw = dataclasses.replace(hw, accelerators=Hardware.profile(args.vram, 0, args.cc).accelerators)
    if args.ram is not None:
        hw = dataclasses.replace(hw, ram_total=args.ram, ram_available=args.ram, shm_total=args.ram,
                                 shm_free=args.ram)
    return hw


def _print_plan(model: ModelSpec, hw: Hardware, result: Plan) -> None:
    gpu = hw.accelerators[0] if hw.accelerators else None
    machine = "no GPU" if gpu is None else f"{gpu.name}, {format_size(gpu.vram_free)} free"
    if gpu is not None and gpu.compute_capability:
        machine += f", compute capability {gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
    print(f"Model     {model.name}: {format_size(model.weights_bytes)}, {model.dtype_bytes} bytes per weight")
    print(f"Hardware  {machine}; RAM {format_size(hw.ram_available)} available")
    print(f"Plan      {result.strategy}")
    print(f"VRAM      {format_size(result.vram_bytes)}" + (f" ({format_size(result.resident_bytes)} of weights resident)"
                                                  if result.strategy == "partial" else ""))
    print(f"RAM       {format_size(result.ram_bytes)}")
    print(textwrap.fill(result.explanation, width=100, initial_indent="Why       ",
                        subsequent_indent=" " * 10))
    for warning in result.warnings:
        print(f"Warning   {warning}")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
