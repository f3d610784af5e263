"""Start the plan's ranks through torchrun: on this machine via its Python API, or on a cluster
with one ``torchrun`` command per node.

A process's *plan* rank (replica-major, `Plan.ranks()`) is not torchrun's global rank: each
process derives it from its node and local rank -- local rank i of a node runs the plan rank
with the i-th smallest device slot there (:func:`node_ranks`) -- and passes it explicitly to
``init_process_group``. Rendezvous and the store are torchrun's.

Command generation is torch-free so that ``polychip launch`` prints instantly.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from polychip.plan.plan import Plan
from polychip.runtime.errors import DistributedRunError, RankDied, RuntimeSetupError
from polychip.runtime.stopping import STOP_FILE_ENV, stop_file_on_signals, worker_signals
from polychip.runtime.topology import check_devices, rank_roles, world_backend
from polychip.spec.errors import PolychipError

DEFAULT_PORT = 29500
ENV_PREFIX = "POLYCHIP_"  # the launcher's variables every rank sees (faults, stop file)
_FORKSERVER_PRELOAD = ["torch", "torch.distributed", "torch.optim", "polychip.runtime.session"]


class TrainingStopped(Exception):
    """SIGINT or SIGTERM stopped a local run: its ranks at a step boundary, after saving
    (runtime.stopping), or ``at_once`` (a second Ctrl-C) without."""

    def __init__(self, signum: int, *, at_once: bool = False) -> None:
        self.signum, self.at_once = signum, at_once
        super().__init__(self.signal_name)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class Task(Protocol):
    """What each rank runs once its process group is up (picklable)."""

    @property
    def emulate(self) -> bool: ...

    @property
    def timeout(self) -> timedelta: ...

    def __call__(self, plan: Plan, rank: int) -> Any: ...


def run_worker(plan: Plan, rank: int, task: Task) -> Any:
    """In a launched process: join the job as plan rank ``rank``, run ``task``, leave cleanly
    (barrier, then destroy the group: without both, ranks can abort at exit)."""
    import torch
    import torch.distributed as dist

    worker_signals()  # Ctrl-C: stop at the next step boundary (runtime.stopping)
    torch.set_num_threads(1)
    roles = rank_roles(plan, emulate=task.emulate)
    dist.init_process_group(world_backend(roles), init_method="env://", rank=rank,
                            world_size=len(roles), timeout=task.timeout)
    try:
        result = task(plan, rank)
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


@dataclass(frozen=True)
class WorkerOutcome:
    rank: int
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    user_error: bool = False  # a PolychipError: the user's input, not the run, is wrong


def _polychip_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}


def _take_env(env: dict[str, str]) -> None:
    """In a rank: polychip's variables exactly as the launcher had them at the launch call.
    A forkserver child has the server's, from its start (a re-plan changes them)."""
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX) and k not in env]:
        del os.environ[key]
    os.environ.update(env)


def _local_entry(plan: Plan, task: Task, env: dict[str, str]) -> WorkerOutcome:
    # One node: the plan rank is the local rank. Errors come back as values so that the
    # parent can tell the rank that failed first from the ranks that lost their peer.
    from torch.distributed.elastic.multiprocessing.api import SignalException

    _take_env(env)
    rank = int(os.environ["LOCAL_RANK"])
    try:
        return WorkerOutcome(rank, run_worker(plan, rank, task))
    except SignalException:
        raise  # the agent is stopping this rank (another one died): let it go at once
    except Exception as exc:
        return WorkerOutcome(rank, None, str(exc), type(exc).__name__,
                             isinstance(exc, PolychipError))


def _preimport() -> None:
    """Import, once in the parent, what every forked rank would otherwise import at the same
    time on a few cores (the first optimizer pulls in hundreds of torch modules, ~1-2 s)."""
    import torch

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


def _start_method(all_cpu: bool) -> str:
    """fork starts a rank in ~0.1 s instead of seconds, but only from a parent safe to fork:
    no accelerator runtime touched and no other thread (a supervisor's watcher), whose held
    locks a forked child inherits (ranks so forked hung after a re-plan). forkserver forks
    them from a clean single-threaded server that has imported torch once."""
    if sys.platform != "linux" or not all_cpu:
        return "spawn"
    if threading.active_count() == 1:
        return "fork"
    import multiprocessing

    multiprocessing.get_context("forkserver").set_forkserver_preload(_FORKSERVER_PRELOAD)
    return "forkserver"


def launch_local(plan: Plan, task: Task, *, start_method: str | None = None,
                 stop_file: Path | None = None) -> list[Any]:
    """Run every rank of ``plan`` on this machine (torchrun's ``elastic_launch``, standalone
    rendezvous on a free port); the results in plan rank order. ``stop_file``: where the
    ranks look for a stop request after each step (runtime.stopping; default: a temporary
    file only this call's signal handler writes) -- a supervisor that writes it stops the
    run at a step boundary, after a save, and gets the results as usual."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    roles = rank_roles(plan, emulate=task.emulate)
    check_devices(roles)
    start_method = start_method or _start_method(all(r.device_type == "cpu" for r in roles))
    if start_method == "fork":
        _preimport()
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=len(roles),
        run_id=f"polychip-{uuid.uuid4().hex[:12]}", rdzv_backend="c10d",
        rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
        start_method=start_method, signals_to_handle="SIGHUP,SIGQUIT")  # INT, TERM: ours
    # Failures are reported below, once and clearly, not as the agent's log lines.
    loggers = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    stop_dir = None if stop_file else tempfile.TemporaryDirectory(prefix="polychip-stop-")
    stop_file = stop_file or Path(stop_dir.name) / "stop"  # type: ignore[union-attr]
    stop_file.unlink(missing_ok=True)
    os.environ[STOP_FILE_ENV] = str(stop_file)  # the ranks inherit it
    try:
        with stop_file_on_signals(stop_file) as taken:
            outcomes: dict[int, WorkerOutcome] = elastic_launch(config, _local_entry)(
                plan, task, _polychip_env())
        if taken:  # the ranks stopped at a step boundary and saved
            raise TrainingStopped(taken[0])
    except (KeyboardInterrupt, SignalException):  # a second Ctrl-C, SIGHUP, SIGQUIT: at once
        raise TrainingStopped(int(signal.SIGINT), at_once=True) from None
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise RankDied(
            f"rank {rank} ({roles[rank].chip}) died with exit code {failure.exitcode} "
            f"without a Python error (killed, out of memory or a crash in native code); "
            f"the other ranks were stopped", rank, failure.exitcode) from None
    finally:
        os.environ.pop(STOP_FILE_ENV, None)
        if stop_dir is not None:
            stop_dir.cleanup()
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
    failed = [o for _, o in sorted(outcomes.items()) if o.error is not None]
    if failed:
        first = next((o for o in failed if o.error_type != DistributedRunError.__name__),
                     failed[0])
        if first.user_error:
            raise RuntimeSetupError(first.error or "")
        raise DistributedRunError(f"rank {first.rank} ({roles[first.rank].chip}) failed: "
                                  f"{first.error_type}: {first.error}")
    return [outcomes[r].result for r in range(len(roles))]


# ---- multi-node: one torchrun command per node --------------------------------------------
def node_ranks(plan: Plan, node: int) -> tuple[int, ...]:
    """Plan ranks on cluster node ``node``; local rank i runs the i-th (by device slot)."""
    on_node = sorted((r.local_device, r.rank) for r in plan.ranks() if r.node == node)
    return tuple(rank for _, rank in on_node)


def used_nodes(plan: Plan) -> tuple[int, ...]:
    return tuple(sorted({r.node for r in plan.ranks()}))


def plan_rank(plan: Plan, node: int, local_rank: int) -> int:
    ranks = node_ranks(plan, node)
    if not 0 <= local_rank < len(ranks):
        raise RuntimeSetupError(
            f"local rank {local_rank} on plan node {node}: the plan has {len(ranks)} devices "
            f"there; start torchrun with --nproc-per-node={len(ranks)} (polychip launch)")
    return ranks[local_rank]


@dataclass(frozen=True)
class NodeCommand:
    host: str
    plan_node: int  # the cluster node this host plays
    node_rank: int  # torchrun's --node-rank
    plan_ranks: tuple[int, ...]  # local rank i -> plan rank plan_ranks[i]
    argv: tuple[str, ...]

    @property
    def line(self) -> str:
        return shlex.join(self.argv)


def hosts_for_nodes(plan: Plan, hosts: Sequence[str]) -> dict[int, str]:
    """Plan node -> host: one host per cluster node, or one per node the plan uses."""
    nodes, used = len(plan.cluster.nodes), used_nodes(plan)
    if len(hosts) == nodes:
        return {n: hosts[n] for n in used}
    if len(hosts) == len(used):
        return dict(zip(used, hosts, strict=True))
    raise RuntimeSetupError(
        f"--nodes gives {len(hosts)} hosts; the plan's cluster has {nodes} nodes and the plan "
        f"uses {len(used)} of them ({', '.join(map(str, used))}): give one host per cluster "
        f"node or one per used node, in cluster order")


def torchrun_commands(plan: Plan, plan_path: str, hosts: Sequence[str], *,
                      port: int = DEFAULT_PORT, train_args: Sequence[str] = ()
                      ) -> tuple[NodeCommand, ...]:
    """The exact ``torchrun`` command of every node (static rendezvous at the first host)."""
    mapping = hosts_for_nodes(plan, hosts)
    nodes = sorted(mapping)
    master = mapping[nodes[0]]
    out = []
    for node_rank, node in enumerate(nodes):
        ranks = node_ranks(plan, node)
        argv = ("torchrun", f"--nnodes={len(nodes)}", f"--nproc-per-node={len(ranks)}",
                f"--node-rank={node_rank}", f"--master-addr={master}",
                f"--master-port={port}", "--max-restarts=0", "-m", "polychip", "train",
                plan_path, "--plan-node", str(node), *train_args)
        out.append(NodeCommand(mapping[node], node, node_rank, ranks, argv))
    return tuple(out)


def torchrun_worker(plan: Plan, node: int, task: Task) -> tuple[int, Any]:
    """Inside a process torchrun started for plan node ``node``: (plan rank, task result)."""
    local_rank, local_world = os.environ.get("LOCAL_RANK"), os.environ.get("LOCAL_WORLD_SIZE")
    if local_rank is None or local_world is None:
        raise RuntimeSetupError(
            "--plan-node is for processes started by torchrun (LOCAL_RANK is not set): run the "
            "commands of `polychip launch`, or leave --plan-node out to run every rank here")
    expected = len(node_ranks(plan, node))
    if int(local_world) != expected:
        raise RuntimeSetupError(
            f"torchrun started {local_world} processes on plan node {node}, the plan has "
            f"{expected} devices there: use --nproc-per-node={expected}")
    rank = plan_rank(plan, node, int(local_rank))
    return rank, run_worker(plan, rank, task)


def _is_local(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn())


def exec_commands(commands: Sequence[NodeCommand]) -> int:
    """Run every node's command (this host directly, others over ssh); the worst exit code."""
    procs = []
    for cmd in commands:
        if _is_local(cmd.host):
            argv = [sys.executable, "-m", "torch.distributed.run", *cmd.argv[1:]]
        else:
            argv = ["ssh", cmd.host, f"cd {shlex.quote(os.getcwd())} && {cmd.line}"]
        procs.append(subprocess.Popen(argv))
    codes = [p.wait() for p in procs]
    return max(codes, key=abs)
