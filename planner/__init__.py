"""Hardware detection and the VRAM planner: pure functions, no ComfyUI, no daemon."""

from .detect import Accelerator, Hardware, detect
from .plan import LADDER, ModelSpec, Plan, PlanImpossible, model_spec_from_file, plan
from .work import FAMILIES, Family, Work

__all__ = ["FAMILIES", "LADDER", "Accelerator", "Family", "Hardware", "ModelSpec", "Plan", "PlanImpossible",
           "Work", "detect", "model_spec_from_file", "plan"]
