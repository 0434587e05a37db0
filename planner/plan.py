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
    """No strategy (or not the one asked for) can run the model; the message says what would fit."""

    code, http_status = "plan_impossible", 422

    def __init__(self, message: str, alternatives: tuple[str, ...] = ()):
        super().__init__(message)
        self.alternatives = alternatives  # strategies that do fit here, best first


@dataclass(frozen=True)
class ModelSpec:
    """A model as the planner sees it.

    `weights_bytes` is what must be on the GPU at once (for a checkpoint: its diffusion model);
    `dtype_bytes` is bytes per weight as stored (4 fp32, 2 fp16/bf16, 1 fp8); `kind` "text_encoder"
    stays 16-bit on CPU, anything else ("diffusion", "vae") is upcast to fp32 there. `family` sizes the
    workspace (None: ComfyUI's defaults, work.GENERIC); `largest_bytes` is the largest tensor as stored
    (None: 2 % of the weights).
    """

    weights_bytes: int
    dtype_bytes: int = 2
    kind: str = "diffusion"
    name: str = ""
    family: Family | None = None
    largest_bytes: int | None = None

    def __post_init__(self):
        if self.weights_bytes <= 0 or self.dtype_bytes not in (1, 2, 4, 8):
            raise ValueError(f"bad model spec: {self.weights_bytes} bytes, {self.dtype_bytes} bytes/weight")
        if self.largest_bytes is not None and not 0 < self.largest_bytes <= self.weights_bytes:
            raise ValueError(f"bad model spec: largest tensor {self.largest_bytes} bytes of {self.weights_bytes}")

    @property
    def params(self) -> int:
        return self.weights_bytes // self.dtype_bytes


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
class _Option:
    strategy: str
    does: str  # what it does here, with the numbers
    vram: int
    ram: int
    resident: int
    problem: str | None  # why it cannot run here; None: it can


class _Situation:
    """One model on one machine: the sizes every strategy is judged by, and one method per strategy."""

    def __init__(self, model: ModelSpec, hw: Hardware, budget: int | None, reserve: int, work: Work | None):
        self.model, self.hw = model, hw
        self.gpu = hw.accelerators[0] if hw.accelerators else None  # device 0, ComfyUI's default
        free = self.gpu.vram_free if self.gpu else 0
        self.usable = max(0, free - reserve if budget is None else min(free - reserve, budget))
        self.usable_why = f"{format_size(free)} free - {format_size(reserve)} reserve"
        if budget is not None and budget < free - reserve:
            self.usable_why += f", capped by the {format_size(budget)} budget"
        self.weights = model.params * min(model.dtype_bytes, 2)
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

    def full_gpu(self) -> _Option:
        need = self.weights + self.workspace
        problem = self._gpu_problem() or self._vram_problem(
            need, f"{format_size(self.weights)} weights + {format_size(self.workspace)} workspace")
        return _Option("full_gpu", f"all {format_size(self.weights)} of weights stay in VRAM",
                       need, 0, self.weights, problem)

    def fp8(self) -> _Option:
        fp8_weights = self.model.params
        need = fp8_weights + self.workspace
        cc = self.gpu.compute_capability if self.gpu else None
        problem = (self._gpu_problem()
                   or ("the weights are already FP8" if self.model.dtype_bytes == 1 else None)
                   or ("Apple MPS has no FP8" if self.gpu.kind == "mps" else None)
                   or ("FP8 needs compute capability 8.9+ and this GPU's is unknown" if cc is None else None)
                   or (f"FP8 needs compute capability 8.9+, this GPU has {cc[0]}.{cc[1]}"
                       if not self.gpu.fp8 else None)
                   or self._vram_problem(need, f"{format_size(fp8_weights)} FP8 weights + "
                                               f"{format_size(self.workspace)} workspace"))
        return _Option("fp8", f"the weights are cast to FP8 on the GPU ({format_size(self.weights)} -> "
                              f"{format_size(fp8_weights)}) and all stay in VRAM", need, 0, fp8_weights, problem)

    def partial(self) -> _Option:
        floor = int(PARTIAL_MIN_FRACTION * self.weights)
        resident = max(0, min(self.weights, self.usable - self.workspace - self.layers))
        streamed = self.weights - resident
        problem = (self._gpu_problem(streams=True)
                   or (self._vram_problem(floor + self.layers + self.workspace,
                                          f"at least {PARTIAL_MIN_FRACTION:.0%} of the weights ({format_size(floor)}) resident + "
                                          f"{format_size(self.layers)} for two streamed layers + "
                                          f"{format_size(self.workspace)} workspace")
                       if resident < floor else None)
                   or (f"streams {format_size(streamed)} of weights from RAM, only {format_size(self.hw.ram_available)} "
                       f"available" if streamed > self.hw.ram_available else None))
        return _Option("partial", f"{format_size(resident)} of the {format_size(self.weights)} of weights stay in VRAM and "
                                  f"the other {format_size(streamed)} stream from pinned RAM at every step",
                       resident + self.layers + self.workspace, streamed, resident, problem)

    def sequential(self) -> _Option:
        need = self.layers + self.stream_workspace
        problem = (self._gpu_problem(streams=True)
                   or self._vram_problem(need, f"{format_size(self.layers)} for two streamed layers + "
                                               f"{format_size(self.stream_workspace)} workspace")
                   or (f"needs all {format_size(self.weights)} of weights in RAM, only "
                       f"{format_size(self.hw.ram_available)} available"
                       if self.weights > self.hw.ram_available else None))
        return _Option("sequential", f"no weights stay in VRAM: all {format_size(self.weights)} stream from pinned "
                                     f"RAM layer by layer at every step", need, self.weights, 0, problem)

    def cpu(self) -> _Option:
        per_weight = min(self.model.dtype_bytes, 2) if self.model.kind == "text_encoder" else 4
        weights = self.model.params * per_weight
        need = weights + self.workspace
        problem = None
        if need > self.hw.ram_available:
            problem = (f"needs {format_size(need)} of RAM ({format_size(weights)} {8 * per_weight}-bit weights + "
                       f"{format_size(self.workspace)} workspace), only {format_size(self.hw.ram_available)} available")
        return _Option("cpu", f"the model runs on the CPU with its {format_size(weights)} of {8 * per_weight}-bit "
                              f"weights in RAM", 0, need, 0, problem)

    def options(self) -> list[_Option]:
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
    reserve = DEFAULT_RESERVE if reserve is None else reserve
    if reserve < 0 or (budget is not None and budget < 0):
        raise ValueError("budget and reserve must be >= 0")
    here = _Situation(model, hardware, budget, reserve, work)
    options = here.options()
    fitting = tuple(o.strategy for o in options if o.problem is None)
    name = model.name or f"a {format_size(model.weights_bytes)} model"
    if strategy == "auto":
        if not fitting:
            raise PlanImpossible(_nothing_fits(name, here, options, model, hardware, reserve, work))
        strategy = fitting[0]
    chosen = options[LADDER.index(strategy)]
    if chosen.problem:
        raise PlanImpossible(f"{strategy} cannot run {name} here: {chosen.problem}. "
                             + (f"What fits: {', '.join(fitting)}." if fitting else "Nothing fits."), fitting)
    result = Plan(chosen.strategy, chosen.vram, chosen.ram, chosen.resident, _warnings(here, chosen),
                  _explain(here, chosen, options))
    log.debug("plan for %s: %s", name, result)
    return result


def _explain(here: _Situation, chosen: _Option, options: list[_Option]) -> str:
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


def _warnings(here: _Situation, chosen: _Option) -> tuple[str, ...]:
    warnings = []
    if chosen.strategy == "fp8":
        warnings.append("FP8 weights: outputs differ slightly from the 16-bit model")
    if chosen.strategy in ("partial", "sequential"):
        warnings.append(f"{format_size(chosen.ram)} cross the PCIe bus at every step: slower than a full load")
        if here.hw.shm_free < chosen.ram:
            warnings.append(f"/dev/shm has {format_size(here.hw.shm_free)} free, less than the {format_size(chosen.ram)} "
                            f"to stream: Hearth cannot share them, ComfyUI will pin private RAM instead")
    if chosen.strategy == "cpu":
        warnings.append("CPU inference is slow: expect minutes per image")
    return tuple(warnings)


def _nothing_fits(name: str, here: _Situation, options: list[_Option], model: ModelSpec,
                  hardware: Hardware, reserve: int, work: Work | None) -> str:
    reasons = "; ".join(f"{o.strategy}: {o.problem}" for o in options)
    seq, cpu = options[LADDER.index("sequential")], options[LADDER.index("cpu")]
    fits = (f"It would fit on a CUDA GPU with {format_size(seq.vram + reserve)} free and {format_size(seq.ram)} of RAM "
            f"(sequential), or on the CPU with {format_size(cpu.ram)} of RAM.")
    if here.usable < (here.gpu.vram_free - reserve if here.gpu else 0):
        try:
            unbudgeted = plan(model, hardware, None, reserve, work=work)
            fits += f" Without the VRAM budget it would run as {unbudgeted.strategy}."
        except PlanImpossible:
            pass
    return (f"Nothing fits {name} on this hardware (usable VRAM {format_size(here.usable)} = {here.usable_why}; "
            f"{reasons}). {fits} Workspace: {here.workspace_why}.")


def model_spec_from_file(path: str | os.PathLike) -> ModelSpec:
    """Size a .safetensors file from its header alone (no tensor data is read).

    A full checkpoint (keys under `model.diffusion_model.`) is sized by its diffusion model: that is what
    is on the GPU while sampling (ComfyUI runs the text encoders and the VAE before and after it).
    The dtype is the one holding most bytes; the largest tensor sizes the streamed layers. Raises BadHeader for a malformed header (the same validation
    as the cache's), ValueError when most bytes are not floats (quantized integer formats are beyond this
    planner).
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
                     largest_bytes=max(e.end - e.begin for e in tensors))
