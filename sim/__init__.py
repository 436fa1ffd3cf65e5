"""memslo's simulator: GPUs, PCIe links and host memory for LLM serving with memory offloading.

Import-light on purpose: ``sim`` never imports torch.
"""

from .cost import BatchShape, CostModel, RooflineCostModel
from .hardware import HardwareSpec, get_hardware
from .model import ModelSpec, get_model
from .plan import OffloadPlan

__all__ = ["BatchShape", "CostModel", "RooflineCostModel", "HardwareSpec", "get_hardware", "ModelSpec",
           "get_model", "OffloadPlan"]
