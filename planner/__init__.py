"""Hardware detection and the VRAM planner: pure functions, no ComfyUI, no daemon."""

from .detect import Accelerator, Hardware, detect
from .fit import WouldFit, would_fit
from .plan import LADDER, Misfit, ModelSpec, Plan, PlanImpossible, model_spec_from_file, plan
from .work import FAMILIES, Family, Work

__all__ = ["FAMILIES", "LADDER", "Accelerator", "Family", "Hardware", "Misfit", "ModelSpec", "Plan", "PlanImpossible",
           "Work", "WouldFit", "detect", "model_spec_from_file", "plan", "would_fit"]
