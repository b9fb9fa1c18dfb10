"""Sharding a sweep across processes with ``torch.distributed`` (``torchrun``).

``torchrun --nproc-per-node N -m robustbench_dyn sweep ... --distributed`` (or ``evaluate``) starts N
ranks. Every rank loads the model and the data and validates the arguments itself; rank 0 alone
opens the results store, works out which examples are still to do (resume) and broadcasts them.
The examples are cut into exactly the chunks a single process would use (same batch size, same
order), and chunk ``i`` goes to rank ``i % N``. Each chunk runs under the RNG seed derived from its
first index, as in a single process, so the rows are the ones a single-process run writes: the test
compares them bit for bit on the CPU (gloo, 2 processes). After every round of N chunks the ranks
send their rows to rank 0 (``gather_object``), which commits them in one transaction, so a killed
run loses at most the round in flight and resumes like a single-process one.

The backend is NCCL when the ranks use CUDA (rank r takes ``cuda:LOCAL_RANK``) and gloo on the CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: How long a rank waits at a collective for the others (rank 0 runs the sanity checks alone).
TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size and the device it computes on."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    """True when the environment of torchrun is there with more than one process."""
    try:
        return all(v in os.environ for v in _TORCHRUN_VARS) and int(os.environ["WORLD_SIZE"]) > 1
    except ValueError:
        return False


def current() -> DistContext:
    """The rank and world size of an initialised process group (0 and 1 without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size())
    return DistContext()


def init(device: str | torch.device | None) -> DistContext:
    """Join the process group torchrun describes in the environment; return this rank's context.

    ``device`` is the user's request (cpu, cuda, auto): with CUDA, rank r uses ``cuda:LOCAL_RANK``.
    """
    import torch.distributed as dist

    from .evaluation import resolve_device

    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise ConfigError(f"--distributed needs the environment torchrun sets ({', '.join(missing)} missing)",
                          "launch with `torchrun --nproc-per-node N -m robustbench_dyn sweep ... --distributed`")
    if not dist.is_available():
        raise ConfigError(f"this torch build ({torch.__version__}) has no torch.distributed",
                          "install a torch build with distributed support, or drop --distributed")
    try:
        rank, world, local = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE or LOCAL_RANK is not an integer", "launch with torchrun") from None
    dev = resolve_device(device)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}",
                              "pass --nproc-per-node at most the number of GPUs")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT, **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistContext(rank, world, dev)


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.active:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, ctx: DistContext) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank 0 (rank order); None on the other ranks."""
    if not ctx.active:
        return [obj]
    import torch.distributed as dist

    out = [None] * ctx.world if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out
