"""`--engine ray`: the offline commands' blocks of work on a Ray cluster (Ray Data), one model per worker.

The driver (the `python -m export` process) cuts the work into blocks (describe: index ranges of the
canonical order; embed: the chunks of the one-process path), leaves out the blocks whose results are on
disk, and streams the rest through a fixed pool of Ray Data actors, each holding one describer or encoder
(one per GPU; per CPU slot in the tests). Every finished block comes back to the driver, which writes it
as a part file at once, so a killed driver loses only the blocks in flight.

Faults: an actor whose process dies is restarted (its model loaded again) and its block sent again (Ray
Data's actor defaults: max_restarts=-1, max_task_retries=-1). An actor takes one block at a time, so a
slow one holds back one block, not a queue. Errors in the data (an undecodable image, a backend failing
on an image, a model that does not load) come back as results, and the driver raises them as the
one-process path does: the same one-line message, exit 2.

Ray is imported here only, and only by `--engine ray`.
"""
import logging
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

# Test-only: "SECONDS[:N[:OTHERS]]" makes the first N actors to start (default: all) sleep SECONDS before
# each block, the others OTHERS (default 0: stand-in work for the benchmark); every actor, restarted ones
# too, records its pid in OUT.ray_test_actors/actor_K (K = start order). The tests slow one actor down (rebalancing) or find an actor's process to kill (faults). Read
# by the driver, which passes it on: workers of a cluster started elsewhere do not see its environment.
TEST_DELAY_ENV = "GPT4IMAGE_RAY_TEST_DELAY"
# a worker's failure that is about the data or the arguments (reported like the one-process path)
DATA_ERRORS = (ValueError, KeyError, IndexError, FileNotFoundError)


@dataclass
class RayOptions:
    address: Optional[str] = None  # None: RAY_ADDRESS, else a Ray started for this command on this host
    workers: Optional[int] = None  # None: every GPU (or every CPU slot when the cluster has no GPU)
    num_gpus_per_worker: Optional[float] = None  # None: 1 when the cluster has GPUs, else 0
    num_cpus_per_worker: float = 1.0


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (pyarrow and pandas come with it; a broken pair fails here)
    except Exception as e:  # ImportError, or e.g. pyarrow refusing the installed numpy
        raise ValueError(f"--engine ray needs Ray Data: pip install 'ms_gpt4image[ray]' (or 'ray[data]') "
                         f"[{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}]") from None
    return ray


def connect(address: Optional[str]):
    """ray.init, quiet: warnings and errors only; our own progress bar instead of Ray Data's."""
    ray = import_ray()
    ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False if address is None else None,
             configure_logging=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # "execution finished", "progress bars disabled"
    return ray


def pool_size(resources: Dict[str, float], opts: RayOptions) -> Tuple[int, float]:
    """(workers, GPUs per worker) for this cluster; asking for more than it has is an error, not a hang."""
    gpus_total, cpus_total = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    gpus = opts.num_gpus_per_worker if opts.num_gpus_per_worker is not None else (1.0 if gpus_total else 0.0)
    fits = min(gpus_total // gpus if gpus else float("inf"), cpus_total // opts.num_cpus_per_worker)
    workers = opts.workers or int(fits)
    if workers < 1 or workers > fits:
        raise ValueError(f"the Ray cluster has {gpus_total:g} GPU(s) and {cpus_total:g} CPU(s): {workers} worker(s) "
                         f"with {gpus:g} GPU(s) and {opts.num_cpus_per_worker:g} CPU(s) each do not fit; "
                         f"change --workers, --num-gpus-per-worker or --num-cpus-per-worker")
    return workers, gpus


def test_delay(claim_dir: Path) -> Optional[Tuple[float, Optional[int], float, str]]:
    """The test-only delay (TEST_DELAY_ENV) for the workers of this run, with a fresh claim folder
    (left after the run for the test to read)."""
    text = os.environ.get(TEST_DELAY_ENV)
    if not text:
        return None
    seconds, count, others = (text.split(":") + ["", ""])[:3]
    shutil.rmtree(claim_dir, ignore_errors=True)
    claim_dir.mkdir(parents=True)
    return float(seconds), int(count) if count else None, float(others or 0), str(claim_dir)


def _claim_delay(delay) -> float:
    """A worker's share of the test-only delay: it takes the first free actor_K file (writing its pid)."""
    if delay is None:
        return 0.0
    seconds, count, others, claim_dir = delay
    k = 0
    while True:
        try:
            fd = os.open(os.path.join(claim_dir, f"actor_{k}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            k += 1
            continue
        except OSError:  # the folder is on another host: not a worker the test watches
            return 0.0
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return seconds if count is None or k < count else others


class BlockWorker:
    """A Ray Data actor: builds its model once (`setup`), then handles one block per call (`process`).
    Blocks and results travel pickled, so exact Python values (ints, strings, float32 arrays) come back."""

    def __init__(self, delay=None, **kwargs):
        self.delay = _claim_delay(delay)
        try:
            self.setup(**kwargs)
            self.failed = None
        except DATA_ERRORS as e:  # e.g. a model folder without a chat template: told with the first block
            self.failed = e
        except ImportError as e:  # a package missing on this worker's host
            self.failed = ValueError(f"a Ray worker cannot import what it needs ({e}); install the same packages "
                                     f"on every host of the cluster")

    def setup(self, **kwargs):
        raise NotImplementedError

    def process(self, block: Dict):
        raise NotImplementedError

    def __call__(self, batch):
        out = []
        for payload in batch["payload"]:
            if self.delay:
                time.sleep(self.delay)
            block = pickle.loads(payload)
            try:
                if self.failed is not None:
                    raise self.failed
                result = self.process(block)
            except DATA_ERRORS as e:
                result = e
            out.append(pickle.dumps((block["key"], result)))
        return {"result": out}


def run_blocks(blocks: List[Dict], worker: type, worker_kwargs: Dict, opts: RayOptions,
               on_result: Callable, claim_dir: Path) -> int:
    """Sends every block (a dict with a "key") through a pool of `worker` actors and calls
    on_result(key, result) in the driver as each finishes (completion order); a data error raised
    by a worker is raised here. Returns the number of workers."""
    ray = connect(opts.address)
    try:
        workers, gpus = pool_size(ray.cluster_resources(), opts)
        ds = ray.data.from_items([{"payload": pickle.dumps(b)} for b in blocks], override_num_blocks=len(blocks))
        ds = ds.map_batches(
            worker, batch_size=1, fn_constructor_kwargs=dict(delay=test_delay(claim_dir), **worker_kwargs),
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            num_gpus=gpus, num_cpus=opts.num_cpus_per_worker)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for payload in batch["result"]:
                key, result = pickle.loads(payload)
                if isinstance(result, Exception):
                    raise result
                on_result(key, result)
        return workers
    finally:
        ray.shutdown()  # ends this job: its actors go, the cluster stays
