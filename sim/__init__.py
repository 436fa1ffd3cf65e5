"""memslo's simulator: GPUs, PCIe links and host memory for LLM serving with memory offloading.

Import-light on purpose: ``sim`` never imports torch.
"""

from .cost import BatchShape, CostModel, RooflineCostModel
from .hardware import HardwareSpec, get_hardware
from .model import ModelSpec, get_model


def __getattr__(name: str):
    # OffloadPlan is imported on first use so that ``python -m sim.plan`` (the capacity planner's entry
    # point, which runs sim/plan.py as __main__) does not find sim.plan already imported
    if name == "OffloadPlan":
        from .plan import OffloadPlan

        return OffloadPlan
    raise AttributeError(f"module 'sim' has no attribute {name!r}")


__all__ = ["BatchShape", "CostModel", "RooflineCostModel", "HardwareSpec", "get_hardware", "ModelSpec",
           "get_model", "OffloadPlan"]
