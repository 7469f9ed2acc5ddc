"""Data-parallel setup: which launcher started this process, and joining its process group.

`detect_launch` reads the environment once, through `LAUNCHERS` (which variable means what for each
launcher), and refuses an inconsistent one with a single line (`LaunchError`, a ValueError: the CLI prints
it and exits 2) before anything is built. `init_distributed` then sets this process's device (rank table,
mpirun; msrun assigns it itself), joins the group (`mindspore.communication.init`) and switches MindSpore
to data-parallel mode. Each rank then reads its own MindRecord shard, gradients are averaged by the train
step (MindSpore's TrainOneStepCell adds the all-reduce in data-parallel mode). Every rank evaluates its own
contiguous slice of the eval set and the counts are summed across ranks (`all_reduce_sum`); only rank 0
writes files.
"""
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Optional, Tuple

import numpy as np

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

from .compat import set_device_id


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: Optional[int] = None  # this process's index on its node, where the launcher says
    device_id: Optional[int] = None   # the Ascend/GPU device it runs on (None on CPU)
    launcher: str = "single"          # a key of LAUNCHERS

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> dict:
        """create_dataset's sharding arguments for this rank (none in a single process)."""
        return dict(num_shards=self.size, shard_id=self.rank) if self.distributed else {}

    def describe(self) -> str:
        """The launch line every rank prints: `launch: mpirun, rank 3 of 8, local rank 3, device 3`."""
        parts = [f"launch: {self.launcher}", f"rank {self.rank} of {self.size}"]
        if self.local_rank is not None:
            parts.append(f"local rank {self.local_rank}")
        if self.device_id is not None:
            parts.append(f"device {self.device_id}")
        return ", ".join(parts)


@dataclass(frozen=True)
class LauncherVars:
    """The environment variables a launcher sets, by meaning; where several are named, the first one set
    counts. `detect`: any of them set means this launcher started the process."""
    detect: Tuple[str, ...]
    size: Tuple[str, ...] = ()
    rank: Tuple[str, ...] = ()
    local_rank: Tuple[str, ...] = ()
    device: Tuple[str, ...] = ()
    rank_table: Tuple[str, ...] = ()


# Checked in this order (MindSpore itself prefers msrun's dynamic cluster over OpenMPI's variables).
LAUNCHERS = {
    # msrun (dynamic cluster): every worker and its scheduler (MS_ROLE=MS_SCHED) run this same command.
    # RANK_ID is exported only where msrun knows the rank in advance (else it is assigned by init());
    # DEVICE_ID is the worker's index on its node, and MindSpore assigns the device from it itself.
    "msrun": LauncherVars(detect=("MS_ROLE",), size=("MS_WORKER_NUM",), rank=("RANK_ID", "MS_NODE_ID"),
                          local_rank=("DEVICE_ID",), rank_table=("RANK_TABLE_FILE",)),
    # mpirun (OpenMPI): MindSpore joins through MPI where OMPI_COMMAND and PMIX_RANK are set, and copies
    # the local rank into DEVICE_ID when mindspore.communication is imported.
    "mpirun": LauncherVars(detect=("OMPI_COMM_WORLD_SIZE",), size=("OMPI_COMM_WORLD_SIZE",),
                           rank=("OMPI_COMM_WORLD_RANK",), local_rank=("OMPI_COMM_WORLD_LOCAL_RANK",),
                           device=("DEVICE_ID", "OMPI_COMM_WORLD_LOCAL_RANK")),
    # rank table (Ascend only): one process per device started by a shell loop; HCCL reads the table.
    "rank table": LauncherVars(detect=("RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH"), size=("RANK_SIZE",),
                               rank=("RANK_ID",), device=("DEVICE_ID",),
                               rank_table=("RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH")),
    # no launcher: a plain process. RANK_SIZE/RANK_ID are read only to refuse a rank-table launch that
    # lost its table.
    "single": LauncherVars(detect=(), size=("RANK_SIZE",), rank=("RANK_ID",), device=("DEVICE_ID",)),
}
MPI_MARKERS = ("OMPI_COMMAND", "PMIX_RANK")  # how MindSpore recognises mpirun (communication/_comm_helper.py)


class LaunchError(ValueError):
    """The launcher's variables contradict each other: one line naming the variable and its value."""


@dataclass(frozen=True)
class Launch:
    """What the environment says, before any process group exists (`detect_launch`)."""
    launcher: str
    size: int
    rank: Optional[int]         # None under msrun until init() assigns it
    local_rank: Optional[int]
    device_id: Optional[int]    # this process's device (None on CPU); set before init() except under msrun
    rank_table: Optional[str] = None

    @property
    def joins(self) -> bool:
        """Whether init() is called: whenever the world is larger than 1, and always under msrun (its
        scheduler process runs this same command and does its part inside init())."""
        return self.size > 1 or self.launcher == "msrun"


def _first(env: Mapping[str, str], names: Tuple[str, ...]):
    """(name, value) of the first of `names` set to something other than blanks; (None, None) if none is."""
    for name in names:
        value = env.get(name)
        if value is not None and value.strip():
            return name, value.strip()
    return None, None


def _int(env: Mapping[str, str], names: Tuple[str, ...], launcher: str):
    name, value = _first(env, names)
    if name is not None and not re.fullmatch(r"\d+", value):
        raise LaunchError(f"{name}={value!r} is not a non-negative integer ({launcher} launch)")
    return name, (None if name is None else int(value))


def _rank_table_devices(path: str):
    """The device entries of a rank table (version 1.0: server_list[].device[]), or None where the file is
    not JSON of that shape (HCCL then reports it)."""
    try:
        data = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError):
        return None
    servers = data.get("server_list") if isinstance(data, dict) else None
    if not isinstance(servers, list) or not all(isinstance(s, dict) and isinstance(s.get("device"), list)
                                                for s in servers):
        return None
    return [d for s in servers for d in s["device"] if isinstance(d, dict)]


def detect_launch(env: Optional[Mapping[str, str]] = None, device_target: Optional[str] = None) -> Launch:
    """Which launcher started this process (msrun, mpirun, rank table, or none: "single"), read from `env`
    (default os.environ) through LAUNCHERS; LaunchError names the variable where they disagree."""
    env = os.environ if env is None else env
    launcher = next(name for name, v in LAUNCHERS.items() if not v.detect or _first(env, v.detect)[0])
    lv = LAUNCHERS[launcher]
    size_var, size = _int(env, lv.size, launcher)
    rank_var, rank = _int(env, lv.rank, launcher)
    _, local_rank = _int(env, lv.local_rank, launcher)
    _, device_id = _int(env, lv.device, launcher)
    table_var, table = _first(env, lv.rank_table)
    detected_by = next((n for n in lv.detect if _first(env, (n,))[0]), None)

    if launcher == "single":
        if rank_var and not size_var:
            raise LaunchError(f"{rank_var}={rank} is set but RANK_SIZE is not: for a rank-table launch set "
                              f"RANK_SIZE, RANK_ID, DEVICE_ID and RANK_TABLE_FILE; for one process unset {rank_var}")
        if size is not None and size > 1:
            hint = ("set RANK_TABLE_FILE (with RANK_ID and DEVICE_ID) for a rank-table launch, or start with msrun "
                    "or mpirun" if device_target in (None, "Ascend") else
                    f"on {device_target} start with msrun or mpirun (the rank-table launch is Ascend only)")
            raise LaunchError(f"{size_var}={size} but no launcher is recognised (no RANK_TABLE_FILE, MS_ROLE "
                              f"or OMPI_COMM_WORLD_SIZE): {hint}; for one process unset {size_var}")
        size = 1 if size is None else size
    elif launcher == "msrun":
        if size is None:
            raise LaunchError(f"{detected_by}={env[detected_by]} is set (msrun) but MS_WORKER_NUM is not")
        if env.get("MS_ROLE", "").strip() == "MS_SCHED":
            rank = None  # the scheduler has no rank
        device_id = local_rank if device_target != "CPU" else None  # msrun sets DEVICE_ID; MindSpore applies it
    elif launcher == "mpirun":
        if rank is None:
            raise LaunchError(f"{size_var}={size} is set (mpirun) but OMPI_COMM_WORLD_RANK is not")
        other = _first(env, LAUNCHERS["rank table"].rank_table)[0]
        if other:
            raise LaunchError(f"{other}={env[other]} is set under mpirun ({size_var}={size}): MindSpore's mpirun "
                              f"launch must run without a rank table; unset {other}")
        missing = [n for n in MPI_MARKERS if not _first(env, (n,))[0]]
        if size > 1 and missing:
            raise LaunchError(f"{size_var}={size} but {' and '.join(missing)} not set: MindSpore recognises an "
                              f"mpirun launch by OMPI_COMMAND and PMIX_RANK (OpenMPI's mpirun sets both)")
    else:  # rank table
        if device_target not in (None, "Ascend"):
            raise LaunchError(f"{table_var}={table} is set but device_target is {device_target}: the rank-table "
                              f"launch is Ascend only; start with msrun or mpirun")
        if size is None:
            raise LaunchError(f"{table_var}={table} is set but RANK_SIZE is not (the number of processes)")
        if rank is None:
            raise LaunchError(f"{table_var}={table} is set but RANK_ID is not (this process's rank)")

    if size is not None and size < 1:
        raise LaunchError(f"{size_var}={size} must be at least 1 ({launcher} launch)")
    if rank is not None and rank >= size:
        raise LaunchError(f"{rank_var}={rank} is outside [0, {size}) ({size_var}={size}, {launcher} launch)")
    if table_var:
        if not os.path.isfile(table):
            raise LaunchError(f"{table_var}={table}: no such file ({launcher} launch)")
        devices = _rank_table_devices(table) if launcher == "rank table" else None
        if devices is not None:
            if len(devices) != size:
                raise LaunchError(f"{table_var}={table} lists {len(devices)} device(s) (server_list[].device[]) "
                                  f"but {size_var}={size}")
            mine = [d for d in devices if str(d.get("rank_id", "")).strip() == str(rank)]
            if not mine and any("rank_id" in d for d in devices):
                raise LaunchError(f"{rank_var}={rank} is not a rank_id in {table_var}={table}")
            if device_id is None and mine and str(mine[0].get("device_id", "")).strip().isdigit():
                device_id = int(str(mine[0]["device_id"]).strip())  # the table's device for this rank
        if launcher == "rank table" and size > 1 and device_id is None:
            raise LaunchError(f"DEVICE_ID is not set ({table_var}={table}, {rank_var}={rank}): the rank-table "
                              f"launch needs each process's device")
    if launcher == "mpirun" and device_id is None:
        device_id = local_rank
    if device_target == "CPU":
        device_id = None
    if launcher == "single" and size == 1:
        rank = 0
    return Launch(launcher, size, rank, local_rank, device_id, table)


def launched_by_msrun() -> bool:
    return detect_launch().launcher == "msrun"


def init_distributed(force: bool = False, device_target: Optional[str] = None) -> World:
    """Decides the launch (detect_launch: LaunchError before anything is built), and where the world is
    larger than 1 (or under msrun, or `force`): sets this process's device for a rank-table or mpirun
    launch, joins the group (mindspore.communication.init: HCCL on Ascend, NCCL on GPU, MCCL on CPU),
    switches to data-parallel mode and prints one `launch: ...` line. A world of 1 otherwise."""
    target = device_target or ms.get_context("device_target")
    launch = detect_launch(device_target=target)
    if not (force or launch.joins):
        return World(0, 1, launch.local_rank, launch.device_id, launch.launcher)
    if launch.launcher != "msrun" and launch.device_id is not None and target in ("Ascend", "GPU"):
        set_device_id(target, launch.device_id)  # msrun assigns each worker's device itself
    from mindspore.communication import get_group_size, get_rank, init
    init()
    world = World(get_rank(), get_group_size(), launch.local_rank, launch.device_id, launch.launcher)
    if launch.launcher in ("mpirun", "rank table") and (world.rank, world.size) != (launch.rank, launch.size):
        lv = LAUNCHERS[launch.launcher]
        raise LaunchError(f"MindSpore joined as rank {world.rank} of {world.size}, but {lv.rank[0]}={launch.rank} "
                          f"and {lv.size[0]}={launch.size} ({launch.launcher} launch)")
    ms.reset_auto_parallel_context()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=world.size)
    if os.environ.get("MS_ROLE", "").strip() != "MS_SCHED":
        print(world.describe(), flush=True)
    return world


class _AllReduceSum(nn.Cell):
    def __init__(self):
        super().__init__()
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)

    def construct(self, x):
        return self.all_reduce(x)


def all_reduce_sum(values, world: World) -> np.ndarray:
    """Element-wise sum of a small vector (e.g. evaluation counts) over all ranks; float64 on the
    host, float32 on the wire (exact for counts below 2**24)."""
    values = np.asarray(values, np.float32)
    if not world.distributed:
        return values.astype(np.float64)
    return _all_reduce_cell()(ms.Tensor(values)).asnumpy().astype(np.float64)


@lru_cache(maxsize=None)
def _all_reduce_cell() -> nn.Cell:
    return _AllReduceSum()  # one cell, one compiled graph
