"""Data-parallel setup (msrun / mindspore.communication).

Under msrun every worker runs the same command; `init_distributed` joins the group and switches
MindSpore to data-parallel mode. Each rank then reads its own MindRecord shard, gradients are
averaged by the train step (MindSpore's TrainOneStepCell adds the all-reduce in data-parallel mode).
Every rank evaluates its own contiguous slice of the eval set and the counts are summed across
ranks (`all_reduce_sum`); only rank 0 writes files.
"""
import os
from functools import lru_cache
from dataclasses import dataclass

import numpy as np

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

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


def launched_by_msrun() -> bool:
    return "MS_WORKER_NUM" in os.environ and "MS_ROLE" in os.environ


def init_distributed(force: bool = False) -> World:
    """Joins the process group when launched by msrun (or `force`); a no-op world of 1 otherwise."""
    if not (force or launched_by_msrun()):
        return World()
    from mindspore.communication import get_group_size, get_rank, init
    init()
    world = World(get_rank(), get_group_size())
    ms.reset_auto_parallel_context()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=world.size)
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
