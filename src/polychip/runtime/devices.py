"""Devices of any vendor: whether this machine has one, making it current, waiting for it,
and its allocator's peak memory.

``torch.accelerator`` serves every device type torch treats as *the* accelerator of the
process: CUDA (and ROCm), XPU, MPS, MTIA, and the vendor backends that register as
PrivateUse1 once their package is imported (``npu`` by torch_npu, ``mlu`` by torch_mlu). A
device type it does not serve (``hpu``: Gaudi keeps its own ``torch.hpu`` module from
habana_frameworks) goes through its vendor module of the same name. torch imports lazily:
the launcher can print commands without paying for it.
"""

from __future__ import annotations

import importlib
import resource
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Device type -> (package to import that registers it, install hint).
DEVICE_PACKAGES: dict[str, tuple[str | None, str]] = {
    "cuda": (None, "a CUDA build of torch"),
    "xpu": (None, "an XPU build of torch"),
    "mps": (None, "torch on Apple silicon"),
    "npu": ("torch_npu", "torch_npu (Ascend)"),
    "mlu": ("torch_mlu", "torch_mlu (Cambricon)"),
    "hpu": ("habana_frameworks.torch.core", "habana_frameworks (Intel Gaudi)"),
}


def _api(device_type: str) -> Any | None:
    """``torch.accelerator`` when it serves ``device_type`` (its package imported first),
    else torch's module of that name (``torch.hpu``), else None."""
    import torch

    package = DEVICE_PACKAGES.get(device_type, (None, ""))[0]
    if package is not None:
        importlib.import_module(package)
    current = torch.accelerator.current_accelerator()
    if current is not None and current.type == device_type:
        return torch.accelerator
    module = getattr(torch, device_type, None)
    return module if isinstance(module, ModuleType) else None


def device_unavailable(device_type: str, index: int) -> str | None:
    """Why this machine cannot run on ``device_type`` number ``index``, or None if it can."""
    if device_type == "cpu":
        return None
    hint = DEVICE_PACKAGES.get(device_type, (None, f"torch support for {device_type}"))[1]
    try:
        api = _api(device_type)
    except ImportError:
        return f"{hint} is not installed"
    if api is None or not api.is_available():
        return f"torch finds no {device_type} device (needs {hint} and the device's driver)"
    if index >= api.device_count():
        return f"the plan uses {device_type}:{index} but only {api.device_count()} exist"
    return None


def set_current_device(device: torch.device) -> None:
    """Make ``device`` the process's current device (kernels and collectives go there)."""
    import torch

    if device.type == "cpu":
        return
    api = _api(device.type)
    assert api is not None, f"no torch support for {device.type} (device_unavailable said so)"
    if api is torch.accelerator:
        api.set_device_index(device.index)
    else:
        api.set_device(device)


def synchronize(device: torch.device) -> None:
    """Wait until every kernel queued on the current ``device`` has run (a no-op on the
    CPU)."""
    if device.type != "cpu":
        api = _api(device.type)
        assert api is not None
        api.synchronize()


def peak_memory(device: torch.device) -> tuple[int, str]:
    """The device allocator's peak (``device``), or the process's peak resident memory on
    the CPU (``host-rss``)."""
    if device.type != "cpu":
        api = _api(device.type)
        if api is not None and hasattr(api, "max_memory_allocated"):
            return int(api.max_memory_allocated(device.index)), "device"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host-rss"
