"""Hardware detection and the VRAM planner: pure functions, no ComfyUI, no daemon."""

from .detect import Accelerator, Hardware, detect
from .plan import LADDER, ModelSpec, Plan, PlanImpossible, model_spec_from_file, plan

__all__ = ["LADDER", "Accelerator", "Hardware", "ModelSpec", "Plan", "PlanImpossible", "detect",
           "model_spec_from_file", "plan"]
