"""Data-parallel setup (msrun / mindspore.communication).

Under msrun every worker runs the same command; `init_distributed` joins the group and switches
MindSpore to data-parallel mode. Each rank then reads its own MindRecord shard, gradients are
averaged by the train step (MindSpore's TrainOneStepCell adds the all-reduce in data-parallel mode), and only rank 0 evaluates and writes files.
"""
import os
from dataclasses import dataclass

import mindspore as ms


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
