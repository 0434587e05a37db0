"""`hearth detect` and `hearth plan`. Handlers return 0 ok, 1 refused (reason on stderr), 2 bad usage.

A plan the planner refuses is laid out on stdout as a plan is (the machine's figures, each strategy's reason,
what would fit), with the one-line refusal on stderr.
"""

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
from ..planner.fit import WouldFit, would_fit
from ..planner.plan import LADDER, Misfit, ModelSpec, Plan, PlanImpossible, compute_note, model_spec_from_file, plan
from ..planner.work import FAMILIES, Work

# --dtype for a SIZE: the weights' safetensors dtype
_DTYPE_NAMES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16", "fp8": "F8_E4M3"}


def register(subparsers: argparse._SubParsersAction) -> None:
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
        print(f"GPU {a.index}    {a.name} ({a.kind}): {format_size(a.vram_total)} total, "
              f"{format_size(a.vram_free)} free{cc}, FP8 {_yes(a.fp8)}, BF16 {_yes(a.bf16)}")
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
            dtype = _DTYPE_NAMES[args.dtype]
            model = ModelSpec(size, DTYPES[dtype].size, args.kind, dtype=dtype)
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
    except PlanImpossible as exc:
        return _refused(exc, model, hw, work, args)
    if args.json:
        print(json.dumps({"model": dataclasses.asdict(model) | {"params": model.params},
                          "hardware": hw.to_dict(), "plan": result.to_dict()}, indent=2))
    else:
        _print_plan(model, hw, result)
    return 0


def _refused(exc: PlanImpossible, model: ModelSpec, hw: Hardware, work: Work | None, args: argparse.Namespace) -> int:
    m = exc.misfit
    if m is None:  # raised without its figures (plan() always gives them): the message is all there is
        print(f"hearth plan: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    fits = would_fit(model, hw, args.budget, args.reserve, args.strategy, work)
    if args.json:
        doc = exc.to_dict()
        doc["error"]["details"]["would_fit"] = dataclasses.asdict(fits)
        print(json.dumps(doc, indent=2))
    else:
        _print_refusal(model, hw, m, fits, args.budget is not None)
    if m.asked == "auto":
        why = f"nothing fits {m.model} here"
    else:
        why = f"{m.asked} cannot run {m.model} here: {m.options[LADDER.index(m.asked)].problem}"
    print(f"hearth plan: {exc.code}: {why}", file=sys.stderr)
    return 1


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


def _machine(hw: Hardware) -> str:
    gpu = hw.accelerators[0] if hw.accelerators else None
    machine = "no GPU" if gpu is None else f"{gpu.name}, {format_size(gpu.vram_free)} free"
    if gpu is not None and gpu.compute_capability:
        machine += f", compute capability {gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
    return f"{machine}; RAM {format_size(hw.ram_available)} available"


def _model(model: ModelSpec) -> str:
    return f"{model.describe()} ({model.dtype_bytes} bytes per weight)"


def _wrap(label: str, text: str, indent: int = 10) -> str:
    return textwrap.fill(text, width=100, initial_indent=f"{label:<{indent}}", subsequent_indent=" " * indent)


def _print_plan(model: ModelSpec, hw: Hardware, result: Plan) -> None:
    print(f"Model     {_model(model)}")
    print(f"Hardware  {_machine(hw)}")
    print(f"Plan      {result.strategy}")
    note = compute_note(model, result.strategy)
    if note:
        print(_wrap("Weights", note))
    resident = f" ({format_size(result.resident_bytes)} of weights resident)" if result.strategy == "partial" else ""
    print(f"VRAM      {format_size(result.vram_bytes)}{resident}")
    print(f"RAM       {format_size(result.ram_bytes)}")
    print(_wrap("Why", result.explanation))
    for warning in result.warnings:
        print(f"Warning   {warning}")


_ROW = 2 + max(map(len, LADDER)) + 2  # the indent of a refusal's rows: a strategy's name and two spaces


def _print_refusal(model: ModelSpec, hw: Hardware, m: Misfit, fits: WouldFit, budgeted: bool) -> None:
    """A refused plan laid out: the machine's figures, one line per strategy, then what would fit."""
    gpu = hw.accelerators[0] if hw.accelerators else None
    print(f"Model     {_model(model)}")
    print(f"Hardware  {_machine(hw)}")
    if gpu is not None:
        print(f"VRAM      {format_size(m.usable_vram)} usable = {m.usable_why}")
    print(_wrap("Workspace", m.workspace_why))
    print("Plan      " + ("none: no strategy fits" if m.asked == "auto" else f"{m.asked} was asked for and cannot run"))
    for o in m.options:
        print(_wrap(f"  {o.strategy}", o.problem or f"fits (VRAM {format_size(o.vram)}, RAM {format_size(o.ram)})",
                    _ROW))
    print("Would fit")
    kind = f"{model.weight_type} weights" + (f" ({model.family.name})" if model.family else "")
    if fits.best is None:
        here = f"no model of {kind}" + ("" if m.asked == "auto" else f" with {m.asked}")
    else:
        others = ", ".join(f"{s} {format_size(n)}" for s, n in fits.largest.items() if s != fits.best.strategy)
        here = (f"models up to {format_size(fits.best.bytes)} of {kind}, as {fits.best.strategy}"
                + (f" (the largest per strategy: {others})" if others else ""))
    print(_wrap("  here", here, _ROW))
    if fits.ram is not None:
        where = "on the CPU " if fits.ram.strategy == "cpu" else "on this GPU " if gpu else ""
        print(_wrap("  more RAM", f"this model {where}with {format_size(fits.ram.bytes)} of RAM available, "
                                  f"as {fits.ram.strategy}", _ROW))
    if fits.vram is not None:
        card = f"{'a CUDA GPU' if gpu is None else 'a GPU'} with {format_size(fits.vram.bytes)} of VRAM free"
        if budgeted:
            card = f"a VRAM budget of at least {format_size(fits.vram.usable or 0)} ({card})"
        else:
            card = f"on {card}"
        print(_wrap("  more VRAM", f"this model with this RAM {card}, as {fits.vram.strategy}", _ROW))
    if m.unbudgeted:
        print(_wrap("  no budget", f"without the VRAM budget this model runs here as {m.unbudgeted}", _ROW))
    alternatives = [o.strategy for o in m.options if o.problem is None]
    if alternatives:
        print(_wrap("  instead", f"{', '.join(alternatives)} (without --strategy: {alternatives[0]})", _ROW))


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
