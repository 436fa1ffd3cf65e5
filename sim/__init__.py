"""memslo's simulator: GPUs, PCIe links and host memory for LLM serving with memory offloading.

The package is layered (docs/architecture.md): ``core`` (specs, requests, plans) < ``cost`` < ``engine`` <
``policies`` / ``handlers`` < ``api`` < ``config`` < the commands. Import-light on purpose: ``sim`` never
imports torch. The names below are the core types, re-exported for convenience.
"""

from importlib.metadata import PackageNotFoundError, version

from sim.core.batch import BatchShape
from sim.core.hardware import HardwareSpec, get_hardware
from sim.core.model import ModelSpec, get_model
from sim.core.offload_plan import OffloadPlan
from sim.cost.base import CostModel
from sim.cost.roofline import RooflineCostModel

try:
    __version__ = version("memslo")
except PackageNotFoundError:  # running from a checkout that was not installed
    __version__ = "0+unknown"

__all__ = ["BatchShape", "CostModel", "RooflineCostModel", "HardwareSpec", "get_hardware", "ModelSpec",
           "get_model", "OffloadPlan", "__version__"]
