"""The VRAM planner: how a model should run on given hardware, best strategy first.

The ladder (each rung is slower and needs less VRAM than the one above):

    full_gpu    every weight in VRAM, at 16 bits
    fp8         weights cast to FP8 on the GPU (half of 16 bits); CUDA with compute capability 8.9+
    partial     R bytes of weights resident in VRAM, the rest streamed from pinned RAM at every step
    sequential  nothing resident: layers streamed one at a time; every weight in RAM
    cpu         weights upcast to fp32 in RAM, as ComfyUI does for the diffusion model on CPU (DESIGN 8a)

Estimates, simple on purpose (each is one constant below or in work.py):
- Weights on the GPU are 16-bit (ComfyUI casts an fp32 file to fp16/bf16), or FP8 when stored as FP8.
- Workspace (activations, attention, library buffers) follows the work, not the weights: ComfyUI's own
  estimate for the model family and the image or video (work.py). Strategies that keep weights resident
  reserve at least 0.8 GiB, ComfyUI's own floor (`minimum_inference_memory`), because ComfyUI keeps that
  much free when it decides how much to load; sequential keeps nothing resident and needs only the work's
  workspace. Without the work the family's native size at batch 1 is assumed (say so: batches and long
  videos need more).
- Largest layer: the model's largest tensor at its GPU width when known (the node and a file's header
  know it), else 2 % of the weights (largest tensor: SD1.5 1.7 %, SDXL 0.6 %, FLUX 0.3 %, Wan 14B 0.5 %).
  Streaming keeps two layers on the GPU: the one computing and the next one in flight.
- Partial keeps at least 10 % of the weights resident; with less it streams ~all of them every step,
  which is what sequential means. A card too small for any resident share therefore streams layers
  (sequential) whenever RAM holds the weights: even at PCIe speed that is far faster than the CPU.
- Default reserve 1 GiB: ComfyUI's EXTRA_RESERVED_VRAM (400 MiB on Linux, 600-700 MiB on Windows) plus
  the few hundred MiB of CUDA context each process holds.
- RAM: only what the plan needs while it runs (partial: the streamed part; sequential: all weights, held
  by Hearth as pinned shared memory; cpu: fp32 weights plus workspace). Hearth's warm copy is extra.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

from ..core.errors import BadHeader, HearthError
from ..core.safetensors_format import DTYPES, read_header
from ..core.sizes import GiB, format_size
from .detect import Hardware
from .work import GENERIC, Family, Work

log = logging.getLogger("hearth.planner")

LADDER = ("full_gpu", "fp8", "partial", "sequential", "cpu")
DEFAULT_RESERVE = GiB
WORKSPACE_FLOOR = int(0.8 * GiB)
LAYER_FRACTION = 0.02
PARTIAL_MIN_FRACTION = 0.10


class PlanImpossible(HearthError):
    """No strategy (or not the one asked for) can run the model; the message says what would fit, in one
    paragraph. `misfit` carries the same in figures (None where a caller raised it without), for a reader
    that lays them out (the CLI) and for the JSON (`to_dict`'s `details`)."""

    code, http_status = "plan_impossible", 422

    def __init__(self, message: str, alternatives: tuple[str, ...] = (), misfit: Misfit | None = None):
        super().__init__(message)
        self.alternatives = alternatives  # strategies that do fit here, best first
        self.misfit = misfit

    def to_dict(self) -> dict:
        doc = super().to_dict()
        if self.misfit is not None:
            doc["error"]["details"] = dataclasses.asdict(self.misfit)
        return doc


@dataclass(frozen=True)
class ModelSpec:
    """A model as the planner sees it.

    `weights_bytes` is what must be on the GPU at once (for a checkpoint: its diffusion model);
    `dtype_bytes` is bytes per weight as stored (4 fp32, 2 fp16/bf16, 1 fp8); `kind` "text_encoder"
    stays 16-bit on CPU, anything else ("diffusion", "vae") is upcast to fp32 there. `family` sizes the
    workspace (None: ComfyUI's defaults, work.GENERIC); `largest_bytes` is the largest tensor as stored
    (None: 2 % of the weights); `dtype` the safetensors dtype holding most bytes, where known ("F16"),
    for the words only.
    """

    weights_bytes: int
    dtype_bytes: int = 2
    kind: str = "diffusion"
    name: str = ""
    family: Family | None = None
    largest_bytes: int | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.weights_bytes <= 0 or self.dtype_bytes not in (1, 2, 4, 8):
            raise ValueError(f"bad model spec: {self.weights_bytes} bytes, {self.dtype_bytes} bytes/weight")
        if self.largest_bytes is not None and not 0 < self.largest_bytes <= self.weights_bytes:
            raise ValueError(f"bad model spec: largest tensor {self.largest_bytes} bytes of {self.weights_bytes}")

    @property
    def params(self) -> int:
        return self.weights_bytes // self.dtype_bytes

    @property
    def weight_type(self) -> str:
        """The stored weights' type in words: 'fp16', 'bf16', 'fp8 (e4m3)'; by width where the dtype is not known."""
        return _TYPE_NAMES.get(self.dtype or "", _width_name(self.dtype_bytes))

    def describe(self) -> str:
        """The model in words, with its size and stored type: 'flux.safetensors, 22.2 GiB of fp16 weights'."""
        weights = f"{format_size(self.weights_bytes)} of {self.weight_type} weights"
        return f"{self.name}, {weights}" if self.name else weights


_TYPE_NAMES = {"F64": "fp64", "F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8 (e4m3)",
               "F8_E5M2": "fp8 (e5m2)", "F8_E4M3FNUZ": "fp8 (e4m3fnuz)", "F8_E5M2FNUZ": "fp8 (e5m2fnuz)",
               "F8_E8M0": "fp8 (e8m0)"}


def _width_name(dtype_bytes: int) -> str:
    """A weight width in words where only the width is known: what the planner computes with."""
    return {1: "fp8", 2: "16-bit", 4: "fp32", 8: "fp64"}[dtype_bytes]


def compute_bytes(model: ModelSpec, strategy: str) -> int:
    """Bytes per weight while `strategy` runs `model`: on a GPU 16 bits at most (ComfyUI casts fp32 to fp16 or
    bf16), FP8 under fp8; on the CPU fp32 for a diffusion model or a VAE (ComfyUI upcasts them there, DESIGN
    8a), the stored width (16 bits at most) for a text encoder."""
    if strategy == "fp8":
        return 1
    if strategy == "cpu" and model.kind != "text_encoder":
        return 4
    return min(model.dtype_bytes, 2)


def compute_note(model: ModelSpec, strategy: str) -> str | None:
    """Why the weights take another size than the file's under `strategy`, with that size; None when they do not."""
    width = compute_bytes(model, strategy)
    if width == model.dtype_bytes:
        return None
    size = format_size(model.params * width)
    if strategy == "cpu":
        kind = "a VAE" if model.kind == "vae" else "a diffusion model"
        cast = "upcasts" if model.dtype_bytes < width else "casts"
        return (f"computed in fp32 on the CPU: ComfyUI {cast} {kind}'s {model.weight_type} weights to fp32 "
                f"there, so they take {size} of RAM")
    if strategy == "fp8":
        return f"cast from {model.weight_type} to fp8 on the GPU: {size} of VRAM"
    return f"cast from {model.weight_type} to 16 bits (fp16 or bf16) on the GPU, as ComfyUI does: {size}"


@dataclass(frozen=True)
class Plan:
    """How to run the model. `resident_bytes`: weights kept in VRAM (all of them, but for partial
    and sequential). `ram_bytes`: RAM the plan needs while it runs (Hearth's warm copy not counted)."""

    strategy: str
    vram_bytes: int
    ram_bytes: int
    resident_bytes: int
    warnings: tuple[str, ...]
    explanation: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Option:
    """One strategy of the ladder on one machine: what it would do and need, and why it cannot run if not."""

    strategy: str
    does: str  # what it does here, with the numbers
    vram: int
    ram: int
    resident: int
    problem: str | None  # why it cannot run here; None: it can


@dataclass(frozen=True)
class Misfit:
    """A refused plan in figures: the machine as the planner saw it and every strategy's verdict there.

    `options` holds the whole ladder, best first (those that fit have no problem); `unbudgeted` is the
    strategy that would run without the VRAM budget (None: no budget binds, or nothing would).
    """

    model: str  # the model in words
    asked: str  # "auto" or the strategy asked for
    usable_vram: int
    usable_why: str
    ram_available: int
    reserve: int
    workspace_why: str
    options: tuple[Option, ...]
    unbudgeted: str | None


class _Situation:
    """One model on one machine: the sizes every strategy is judged by, and one method per strategy."""

    def __init__(self, model: ModelSpec, hw: Hardware, budget: int | None, reserve: int, work: Work | None):
        self.model, self.hw, self.reserve, self.work = model, hw, reserve, work
        self.gpu = hw.accelerators[0] if hw.accelerators else None  # device 0, ComfyUI's default
        free = self.gpu.vram_free if self.gpu else 0
        self.usable = max(0, free - reserve if budget is None else min(free - reserve, budget))
        self.usable_why = f"{format_size(free)} free - {format_size(reserve)} reserve"
        if budget is not None and budget < free - reserve:
            self.usable_why += f", capped by the {format_size(budget)} budget"
        self.weights = model.params * compute_bytes(model, "full_gpu")
        family = model.family or GENERIC
        self.stream_workspace = family.workspace(work)  # what a run with nothing resident needs
        self.workspace = max(WORKSPACE_FLOOR, self.stream_workspace)  # with resident weights: ComfyUI's floor
        self.workspace_why = (f"{format_size(self.stream_workspace)} for {(work or family.native).describe()} "
                              f"({family.name} estimate{'' if work else ', work not given: assumed'})")
        largest = (model.largest_bytes // model.dtype_bytes * min(model.dtype_bytes, 2) if model.largest_bytes
                   else int(LAYER_FRACTION * self.weights))
        self.layers = 2 * largest

    def _gpu_problem(self, streams: bool = False) -> str | None:
        if self.gpu is None:
            return "no GPU"
        if streams and self.gpu.kind == "mps":
            return "Apple MPS shares RAM with the GPU, so there is nothing to stream from"
        return None

    def _vram_problem(self, need: int, parts: str) -> str | None:
        if need <= self.usable:
            return None
        return f"needs {format_size(need)} of VRAM ({parts}), only {format_size(self.usable)} usable"

    def full_gpu(self) -> Option:
        need = self.weights + self.workspace
        problem = self._gpu_problem() or self._vram_problem(
            need, f"{format_size(self.weights)} weights + {format_size(self.workspace)} workspace")
        return Option("full_gpu", f"all {format_size(self.weights)} of weights stay in VRAM",
                       need, 0, self.weights, problem)

    def _fp8_problem(self) -> str | None:
        if self.gpu is None:
            return "no GPU"
        if self.model.dtype_bytes == 1:
            return "the weights are already FP8"
        if self.gpu.kind == "mps":
            return "Apple MPS has no FP8"
        cc = self.gpu.compute_capability
        if cc is None:
            return "FP8 needs compute capability 8.9+ and this GPU's is unknown"
        return None if self.gpu.fp8 else f"FP8 needs compute capability 8.9+, this GPU has {cc[0]}.{cc[1]}"

    def fp8(self) -> Option:
        fp8_weights = self.model.params * compute_bytes(self.model, "fp8")
        need = fp8_weights + self.workspace
        problem = self._fp8_problem() or self._vram_problem(
            need, f"{format_size(fp8_weights)} FP8 weights + {format_size(self.workspace)} workspace")
        return Option("fp8", f"the weights are cast to FP8 on the GPU ({format_size(self.weights)} -> "
                              f"{format_size(fp8_weights)}) and all stay in VRAM", need, 0, fp8_weights, problem)

    def partial(self) -> Option:
        floor = int(PARTIAL_MIN_FRACTION * self.weights)
        resident = max(0, min(self.weights, self.usable - self.workspace - self.layers))
        streamed = self.weights - resident
        problem = (self._gpu_problem(streams=True)
                   or (self._vram_problem(floor + self.layers + self.workspace,
                                          f"at least {PARTIAL_MIN_FRACTION:.0%} of the weights ({format_size(floor)}) "
                                          f"resident + {format_size(self.layers)} for two streamed layers + "
                                          f"{format_size(self.workspace)} workspace")
                       if resident < floor else None)
                   or (f"streams {format_size(streamed)} of weights from RAM, only "
                       f"{format_size(self.hw.ram_available)} available" if streamed > self.hw.ram_available else None))
        return Option("partial", f"{format_size(resident)} of the {format_size(self.weights)} of weights stay in VRAM "
                                 f"and the other {format_size(streamed)} stream from pinned RAM at every step",
                      resident + self.layers + self.workspace, streamed, resident, problem)

    def sequential(self) -> Option:
        need = self.layers + self.stream_workspace
        problem = (self._gpu_problem(streams=True)
                   or self._vram_problem(need, f"{format_size(self.layers)} for two streamed layers + "
                                               f"{format_size(self.stream_workspace)} workspace")
                   or (f"needs all {format_size(self.weights)} of weights in RAM, only "
                       f"{format_size(self.hw.ram_available)} available"
                       if self.weights > self.hw.ram_available else None))
        return Option("sequential", f"no weights stay in VRAM: all {format_size(self.weights)} stream from pinned "
                                     f"RAM layer by layer at every step", need, self.weights, 0, problem)

    def cpu(self) -> Option:
        width = compute_bytes(self.model, "cpu")
        words = self.model.weight_type if width == self.model.dtype_bytes else _width_name(width)
        weights = self.model.params * width
        need = weights + self.workspace
        problem = None
        if need > self.hw.ram_available:
            problem = (f"needs {format_size(need)} of RAM ({format_size(weights)} of {words} weights + "
                       f"{format_size(self.workspace)} workspace), only {format_size(self.hw.ram_available)} available")
        return Option("cpu", f"the model runs on the CPU with its weights in {words}, {format_size(weights)} in RAM",
                      0, need, 0, problem)

    def options(self) -> list[Option]:
        return [getattr(self, name)() for name in LADDER]


def plan(model: ModelSpec, hardware: Hardware, budget: int | None = None, reserve: int | None = None,
         strategy: str = "auto", work: Work | None = None) -> Plan:
    """Pick the best strategy that fits (or check the one asked for) and explain the choice.

    `budget`: the most VRAM Hearth may use, in bytes (None: all free VRAM); `reserve`: VRAM left free
    for everything else (None: 1 GiB); `work`: the image or video sampled (None: the model family's
    native size, batch 1). Build `hardware` with `detect()` or `Hardware.profile(...)`.
    Raises PlanImpossible when nothing fits, or the strategy asked for does not.
    """
    if strategy != "auto" and strategy not in LADDER:
        raise ValueError(f"unknown strategy {strategy!r}; one of auto, {', '.join(LADDER)}")
    here = _situation(model, hardware, budget, reserve, work)
    options = here.options()
    fits = tuple(o.strategy for o in options if o.problem is None)
    if strategy == "auto" and fits:
        strategy = fits[0]
    chosen = None if strategy == "auto" else options[LADDER.index(strategy)]
    if chosen is None or chosen.problem:
        misfit = _misfit(here, strategy, options)
        raise PlanImpossible(_refusal(misfit, fits), fits, misfit)
    result = Plan(chosen.strategy, chosen.vram, chosen.ram, chosen.resident, _warnings(here, chosen),
                  _explain(here, chosen, options))
    log.debug("plan for %s: %s", model.name or model.describe(), result)
    return result


def fitting(model: ModelSpec, hardware: Hardware, budget: int | None = None, reserve: int | None = None,
            work: Work | None = None) -> tuple[str, ...]:
    """The strategies that can run `model` on `hardware`, best first (empty: none); arguments as plan()'s."""
    return tuple(o.strategy for o in _situation(model, hardware, budget, reserve, work).options() if o.problem is None)


def _situation(model: ModelSpec, hardware: Hardware, budget: int | None, reserve: int | None,
               work: Work | None) -> _Situation:
    reserve = DEFAULT_RESERVE if reserve is None else reserve
    if reserve < 0 or (budget is not None and budget < 0):
        raise ValueError("budget and reserve must be >= 0")
    return _Situation(model, hardware, budget, reserve, work)


def _explain(here: _Situation, chosen: Option, options: list[Option]) -> str:
    usage = f"VRAM {format_size(chosen.vram)}, RAM {format_size(chosen.ram)}"
    if here.gpu:
        usage += f"; usable VRAM {format_size(here.usable)} = {here.usable_why}"
    text = f"Chose {chosen.strategy}: {chosen.does} ({usage})."
    why_not: dict[str, list[str]] = {}  # one sentence per reason ("no GPU" rules out four at once)
    for better in reversed(options[:LADDER.index(chosen.strategy)]):  # the next better one first
        why = better.problem or f"it would fit, but {chosen.strategy} was asked for"
        why_not.setdefault(why, []).append(better.strategy)
    for why, names in why_not.items():
        text += f" Not {' or '.join(names)}: {why}."
    return text + f" Workspace: {here.workspace_why}."


def _warnings(here: _Situation, chosen: Option) -> tuple[str, ...]:
    warnings = []
    if chosen.strategy == "fp8":
        warnings.append("FP8 weights: outputs differ slightly from the 16-bit model")
    if chosen.strategy in ("partial", "sequential"):
        warnings.append(f"{format_size(chosen.ram)} cross the PCIe bus at every step: slower than a full load")
        if here.hw.shm_free < chosen.ram:
            warnings.append(f"/dev/shm has {format_size(here.hw.shm_free)} free, less than the "
                            f"{format_size(chosen.ram)} to stream: Hearth cannot share them, ComfyUI will pin private "
                            f"RAM instead")
    if chosen.strategy == "cpu":
        warnings.append("CPU inference is slow: expect minutes per image")
    return tuple(warnings)


def _misfit(here: _Situation, asked: str, options: list[Option]) -> Misfit:
    unbudgeted = None
    free = here.gpu.vram_free if here.gpu else 0
    if here.usable < free - here.reserve:  # the budget binds: would the model run without it?
        unbound = [o.strategy for o in _Situation(here.model, here.hw, None, here.reserve, here.work).options()
                   if o.problem is None]
        unbudgeted = (unbound[0] if unbound else None) if asked == "auto" else (asked if asked in unbound else None)
    return Misfit(here.model.name or here.model.describe(), asked, here.usable, here.usable_why,
                  here.hw.ram_available, here.reserve, here.workspace_why, tuple(options), unbudgeted)


def _refusal(m: Misfit, fits: tuple[str, ...]) -> str:
    """The refusal in one paragraph: what a node's warning, a log line and the API's error message carry."""
    if m.asked != "auto":
        problem = m.options[LADDER.index(m.asked)].problem
        return (f"{m.asked} cannot run {m.model} here: {problem}. "
                + (f"What fits: {', '.join(fits)}." if fits else "Nothing fits."))
    reasons = "; ".join(f"{o.strategy}: {o.problem}" for o in m.options)
    seq, cpu = m.options[LADDER.index("sequential")], m.options[LADDER.index("cpu")]
    text = (f"It would fit on a CUDA GPU with {format_size(seq.vram + m.reserve)} free and {format_size(seq.ram)} of "
            f"RAM (sequential), or on the CPU with {format_size(cpu.ram)} of RAM.")
    if m.unbudgeted:
        text += f" Without the VRAM budget it would run as {m.unbudgeted}."
    return (f"Nothing fits {m.model} on this hardware (usable VRAM {format_size(m.usable_vram)} = {m.usable_why}; "
            f"{reasons}). {text} Workspace: {m.workspace_why}.")


def model_spec_from_file(path: str | os.PathLike) -> ModelSpec:
    """Size a .safetensors file from its header alone (no tensor data is read).

    A full checkpoint (keys under `model.diffusion_model.`) is sized by its diffusion model: that is what
    is on the GPU while sampling (ComfyUI runs the text encoders and the VAE before and after it).
    The dtype is the one holding most bytes; the largest tensor sizes the streamed layers. Raises BadHeader
    for a malformed header (the same validation as the cache's), ValueError when most bytes are not floats
    (quantized integer formats are beyond this planner).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        header = read_header(f.fileno(), path)
    tensors = header.tensors
    if any(e.name.startswith("model.diffusion_model.") for e in tensors):
        tensors = tuple(e for e in tensors if e.name.startswith("model.diffusion_model."))
    by_dtype: dict[str, int] = {}
    for e in tensors:
        by_dtype[e.dtype] = by_dtype.get(e.dtype, 0) + e.end - e.begin
    if sum(by_dtype.values()) == 0:
        raise BadHeader(f"{path}: no tensor data")
    dominant = max(by_dtype, key=lambda k: by_dtype[k])
    if not DTYPES[dominant].is_float:
        raise ValueError(f"{path}: most weights are {dominant}; the planner sizes float weights only")
    return ModelSpec(sum(by_dtype.values()), DTYPES[dominant].size, "diffusion", os.path.basename(path),
                     largest_bytes=max(e.end - e.begin for e in tensors), dtype=dominant)
