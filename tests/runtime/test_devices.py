"""Devices of any vendor through torch.accelerator (or the vendor's own module), on a machine
that may have none."""

from __future__ import annotations

import pytest
import torch

from polychip.runtime import devices


def test_the_cpu_is_always_there_and_reports_the_process_peak_memory() -> None:
    cpu = torch.device("cpu")
    assert devices.device_unavailable("cpu", 0) is None
    devices.set_current_device(cpu)
    devices.synchronize(cpu)
    peak, kind = devices.peak_memory(cpu)
    assert kind == "host-rss" and peak > 10 * 2**20  # torch alone takes more


def test_torch_accelerator_serves_the_device_type_it_reports(monkeypatch) -> None:
    monkeypatch.setattr(torch.accelerator, "current_accelerator",
                        lambda check_available=False: torch.device("xpu"))
    assert devices._api("xpu") is torch.accelerator
    assert devices._api("mps") is torch.mps  # not the accelerator: torch's module of the type
    with pytest.raises(ImportError):  # a vendor's type needs its package
        devices._api("hpu")


@pytest.mark.skipif(torch.accelerator.is_available(), reason="this machine has an accelerator")
def test_a_missing_device_says_what_is_missing() -> None:
    assert "torch finds no cuda device" in (devices.device_unavailable("cuda", 0) or "")
    assert devices.device_unavailable("npu", 0) == "torch_npu (Ascend) is not installed"
