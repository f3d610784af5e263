"""One `polychip profile` run: a request (model, device, grid) -> a `Profile` of this chip.

Defaults: a grid that takes well under a minute for the `tiny` model on a CPU, and realistic
sizes on an accelerator; `quick_request` is a tiny grid for tests and the README.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from polychip import __version__
from polychip.plan.capabilities import RUNTIME
from polychip.runtime.devices import DEVICE_PACKAGES, device_unavailable
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.profile import DTYPES, PartProfiler, Tick, measure_parts, parts_grid
from polychip.runtime.profile_comm import measure_host_copies, measure_links
from polychip.runtime.profile_host import measurable, measure_host
from polychip.runtime.profile_load import busy_neighbours
from polychip.runtime.profile_timing import Timing, matmul_precision
from polychip.spec.accelerators import normalise, resolve_name
from polychip.spec.model import ModelSpec
from polychip.spec.profile import ModelShape, Profile, Provenance

OPTIMIZER_MIN_PARAMS = 1 << 20  # time AdamW on at least this many parameters
OPTIMIZER_MAX_PARAMS = 1 << 28
DEFAULT_TIMING = Timing(warmup=2, repeats=5)
MEMORY_METHOD = ("activation_bytes: storages autograd saves for backward (saved_tensors_hooks), "
                 "parameters and a block's rotary cos/sin (its stage's) excluded; peak_bytes: "
                 "allocator max_memory_allocated delta; fixed_memory_bytes: device total - "
                 "free - allocator reserve, on the CPU the process's resident memory before "
                 "it held any tensor")


@dataclass(frozen=True)
class ProfileRequest:
    model: ModelSpec
    device_type: str  # cuda, npu, xpu, mlu, cpu, ...
    chip: str  # the chip type the profile is keyed by
    precision: str
    tps: tuple[int, ...]
    micro_batches: tuple[int, ...]
    seq_lens: tuple[int, ...]
    message_bytes: tuple[int, ...]
    collective_ranks: int  # processes (devices) for collectives; < 2: none measured
    backend: str  # collective backend (gloo on the CPU)
    timing: Timing = DEFAULT_TIMING
    cpu_threads: int | None = 1  # torch threads on the CPU (1: as each rank of a run)
    busy_neighbours: int = 0  # CPU: other cores running the same block while it times


def check_device(device_type: str) -> None:
    """Raise RuntimeSetupError naming the missing package when this machine lacks the
    device type."""
    why = device_unavailable(device_type, 0)
    if why is not None:
        package = DEVICE_PACKAGES.get(device_type, (None, f"torch support for {device_type}"))
        raise RuntimeSetupError(
            f"--device {device_type}: {why}; install {package[1]} (and the device's driver), "
            f"or profile another device type (--device cpu)")


def device_count(device_type: str) -> int:
    if device_type == "cpu":
        return 1
    return int(getattr(torch, device_type).device_count())


def device_name(device_type: str) -> str:
    if device_type == "cpu":
        cpuinfo = Path("/proc/cpuinfo")
        lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
        model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                     "")
        return model or platform.processor() or platform.machine() or "cpu"
    module = getattr(torch, device_type)
    return str(module.get_device_name(0)) if hasattr(module, "get_device_name") else device_type


def default_chip(device_type: str) -> str:
    """The catalog name matching the device's own name ("NVIDIA H200" -> h200), else the
    device's name normalised; "cpu" on the CPU."""
    if device_type == "cpu":
        return "cpu"
    name = normalise(device_name(device_type))
    for candidate in (name, *name.split("-")):
        hit = resolve_name(candidate)
        if hit is not None:
            return hit
    return name


def valid_tps(model: ModelSpec, tps: tuple[int, ...]) -> tuple[int, ...]:
    """The degrees of `tps` that split the model's heads, kv heads and FFN width."""
    return tuple(t for t in tps if not (model.num_heads % t or model.num_kv_heads % t
                                        or model.ffn_hidden_size % t))


def check_request(req: ProfileRequest) -> None:
    check_device(req.device_type)
    model = req.model
    family = getattr(model, "family", "llama")
    if model.mlp not in RUNTIME.mlp or family not in RUNTIME.model_families:
        raise RuntimeSetupError(
            f"model {model.name!r} ({family}, {model.mlp} MLP): `polychip profile` times the "
            f"runtime's own blocks, which are Llama-style ({', '.join(sorted(RUNTIME.mlp))}); "
            f"profile such a model, or write a profile by hand from your own measurements "
            f"(docs/profile-format.md)")
    bad = sorted(set(req.tps) - set(valid_tps(req.model, req.tps)))
    if bad:
        raise RuntimeSetupError(
            f"--tp {','.join(map(str, bad))}: a TP degree must divide num_heads "
            f"{req.model.num_heads}, num_kv_heads {req.model.num_kv_heads} and "
            f"ffn_hidden_size {req.model.ffn_hidden_size}; use "
            f"{','.join(map(str, valid_tps(req.model, (1, 2, 4, 8, 16)))) or '1'}")
    if req.collective_ranks > max(device_count(req.device_type), 1) and req.device_type != "cpu":
        raise RuntimeSetupError(
            f"--collective-ranks {req.collective_ranks}: this machine has "
            f"{device_count(req.device_type)} {req.device_type} device(s); use at most that")
    if not (req.tps and req.micro_batches and req.seq_lens):
        raise RuntimeSetupError("the grid is empty: give at least one --tp, --micro-batches "
                                "and --seq-lens value")


def host_points(req: ProfileRequest) -> list[tuple[int, int]]:
    """(micro_batch, seq_len) at which the runtime's host work is measured (none where the
    runtime cannot run the request's precision or read its corpus with the model)."""
    if not measurable(req.model, req.precision):
        return []
    return [(b, s) for s in req.seq_lens for b in req.micro_batches]


def num_measurements(req: ProfileRequest) -> int:
    """Progress steps: 3 parts per grid point, the optimizer, host work, links, copies."""
    grid = len(req.tps) * len(req.micro_batches) * len(req.seq_lens)
    return 3 * grid + 1 + len(host_points(req)) + (1 if req.collective_ranks >= 2 else 0) + 1


def _resident_bytes() -> int | None:
    """This process's resident memory (Linux), or None."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _fixed_memory_bytes(device: torch.device, cpu_process_bytes: int | None) -> int | None:
    """Memory in use outside the job's tensors, where measurable: on a device, outside the
    allocator (context, libraries); on the CPU, the process itself before it holds any
    tensor of the job (the interpreter, torch, polychip: `cpu_process_bytes`)."""
    if device.type == "cpu":
        return cpu_process_bytes
    module = getattr(torch, device.type, None)
    if not hasattr(module, "mem_get_info"):
        return None
    free, total = module.mem_get_info(device)
    return max(0, int(total - free - module.memory_reserved(device)))


def profile_chip(req: ProfileRequest, tick: Tick) -> Profile:
    """Measure everything the request asks for on device 0 of its type."""
    check_request(req)
    device = torch.device(req.device_type, 0) if req.device_type != "cpu" else torch.device("cpu")
    process_bytes = _resident_bytes()  # before the profile builds any tensor
    threads = torch.get_num_threads()
    if req.device_type == "cpu" and req.cpu_threads:
        torch.set_num_threads(req.cpu_threads)
    try:
        neighbours = req.busy_neighbours if req.device_type == "cpu" else 0
        load = busy_neighbours(neighbours, req.model, DTYPES[req.precision],
                               max(req.micro_batches), max(req.seq_lens))
        with load, matmul_precision(req.precision):
            parts = PartProfiler(req.model, device, req.precision, req.timing, tick)
            measured = measure_parts(parts, parts_grid(req.tps, req.micro_batches, req.seq_lens))
            per_param, fixed_s, num_params = parts.optimizer(OPTIMIZER_MIN_PARAMS,
                                                             OPTIMIZER_MAX_PARAMS)
            host, host_step_s = (), None
            if host_points(req) and not dist_busy():
                host, host_step_s = measure_host(req.model, req.device_type, req.backend,
                                                 req.precision, host_points(req), tick)
        d2h, h2d = measure_host_copies(device, req.message_bytes, req.timing)
        tick("copies device <-> host")
        collectives, p2p = (), ()
        if req.collective_ranks >= 2:
            with tempfile.TemporaryDirectory(prefix="polychip-profile-") as work:
                collectives, p2p = measure_links(req.device_type, req.backend,
                                                 req.collective_ranks, req.message_bytes,
                                                 req.timing, Path(work))
            tick(f"collectives among {req.collective_ranks} {req.backend} ranks")
        fixed = _fixed_memory_bytes(device, process_bytes)
    finally:
        torch.set_num_threads(threads)
    return Profile(
        chip=req.chip, model=ModelShape.of(req.model), precision=req.precision,
        attention="fused", provenance=_provenance(req), blocks=measured["blocks"],
        embedding=measured["embedding"], head=measured["head"],
        optimizer_s_per_param=per_param, optimizer_num_params=num_params,
        optimizer_fixed_s=fixed_s,
        collectives=collectives, p2p=p2p, d2h=d2h, h2d=h2d, host=host, host_step_s=host_step_s,
        fixed_memory_bytes=fixed)


def dist_busy() -> bool:
    """A process group is already up in this process (a test's): the host work, which
    needs one of its own, is not measured."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _provenance(req: ProfileRequest) -> Provenance:
    threads = (f"{req.cpu_threads} CPU thread(s) per chip, as each rank of `polychip train`, "
               f"{req.busy_neighbours} other core(s) busy with the same block; "
               if req.device_type == "cpu" else "")
    return Provenance(
        device=device_name(req.device_type), device_type=req.device_type,
        torch_version=str(torch.__version__),
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        host=socket.gethostname(), polychip_version=__version__,
        warmup=req.timing.warmup, repeats=req.timing.repeats, memory_method=MEMORY_METHOD,
        notes=f"{threads}collectives over {req.backend}, float32 messages")


def quick_request(req: ProfileRequest) -> ProfileRequest:
    """A tiny grid (seconds on a CPU for `tiny`): for tests and a first try."""
    return replace(req, tps=valid_tps(req.model, (1, 2)), micro_batches=(1, 2), seq_lens=(64,),
                   message_bytes=(1 << 12, 1 << 18), timing=Timing(warmup=1, repeats=3),
                   collective_ranks=min(req.collective_ranks, 2))
