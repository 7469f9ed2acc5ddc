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

The head: given an address (--address, RAY_ADDRESS), the driver first waits up to --connect-timeout for
its port to accept a connection, and joining must then end within as long again; while the blocks run, it
tries the port every second and, after --connect-timeout without an answer, ends with one line: the
address, the parts kept, the command that continues. Ray's own client would wait for minutes at the start,
and end the driver after 60 s mid-run, with neither the address nor what was kept.

Ray is imported here only, and only by `--engine ray`.
"""
import contextlib
import logging
import os
import pickle
import shutil
import socket
import sys
import threading
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
CONNECT_TIMEOUT = 30.0  # seconds: --connect-timeout's default
# Ray ends a driver whose head has not answered for 60 s (gcs_rpc_server_reconnect_timeout_s): a loss is
# declared before that, whatever --connect-timeout says
LOST_AFTER_MAX = 45.0


@dataclass
class RayOptions:
    address: Optional[str] = None  # None: RAY_ADDRESS, else a Ray started for this command on this host
    workers: Optional[int] = None  # None: every GPU (or every CPU slot when the cluster has no GPU)
    num_gpus_per_worker: Optional[float] = None  # None: 1 when the cluster has GPUs, else 0
    num_cpus_per_worker: float = 1.0
    connect_timeout: float = CONNECT_TIMEOUT  # to reach the head at the start, and again when it stops answering
    # for the line that reports a lost cluster: what is kept and the command that continues (the CLI's)
    kept: Callable[[], str] = lambda: "run the command again once the cluster is back"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (pyarrow and pandas come with it; a broken pair fails here)
    except Exception as e:  # ImportError, or e.g. pyarrow refusing the installed numpy
        raise ValueError(f"--engine ray needs Ray Data: pip install 'ms_gpt4image[ray]' (or 'ray[data]') "
                         f"[{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}]") from None
    return ray


def head_of(address: Optional[str]) -> Optional[Tuple[str, int]]:
    """(host, port) of the head at `address` (HOST:PORT, ray://HOST:PORT); None where Ray looks for a
    cluster on this host itself ('auto', no address) or the address has no port."""
    if not address or address in ("auto", "local"):
        return None
    host, _, port = address.split("://")[-1].rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def answers(head: Tuple[str, int], timeout: float) -> bool:
    """Whether the head's port accepts a TCP connection within `timeout` seconds."""
    try:
        with socket.create_connection(head, timeout=timeout):
            return True
    except OSError:  # refused, unreachable, timed out, unknown host
        return False


def unreachable(address: str, head: Tuple[str, int], seconds: float) -> str:
    return (f"could not join a Ray cluster at {address} within {seconds:g} s: check that its head is running "
            f"(`ray start --head --port={head[1]}` on {head[0]}; `ray status` there), that {head[1]} is the port "
            f"given to `ray start` (not the dashboard's), and that no firewall blocks it; --connect-timeout SECONDS "
            f"waits longer")


def wait_for_head(address: str, head: Tuple[str, int], seconds: float) -> None:
    """Returns once the head's port accepts a connection (a head still starting is waited for); after
    `seconds`, a ValueError that names the address and what to check."""
    deadline = time.monotonic() + seconds
    while not answers(head, min(2.0, max(0.1, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            raise ValueError(unreachable(address, head, seconds))
        time.sleep(0.25)


def fail_now(message: str) -> None:
    """'error: MESSAGE' and exit 2 at once, from any thread: Ray's client blocks on a head that does not
    answer (ray.init retries for minutes; Ray Data's cleanup after an exception waits on the head too), so
    no exception would get out in time. The driver's files are whole (parts are renamed into place), as
    after a SIGKILL, which a rerun resumes."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(2)


@contextlib.contextmanager
def exit_after(seconds: float, message: str):
    """fail_now(message) unless the block ends within `seconds`."""
    done = threading.Event()

    def expire():
        if not done.wait(seconds):
            fail_now(message)

    threading.Thread(target=expire, daemon=True).start()
    try:
        yield
    finally:
        done.set()


class HeadWatch:
    """While the blocks run: the head's port is tried every second; after `seconds` without an answer,
    fail_now(message()) (on a line of its own, after the progress bar)."""

    def __init__(self, head: Tuple[str, int], seconds: float, message: Callable[[], str]):
        self.head, self.seconds, self.message = head, seconds, message
        self.stop = threading.Event()

    def _watch(self) -> None:
        answered = time.monotonic()
        while not self.stop.wait(1.0):
            if answers(self.head, 1.0):
                answered = time.monotonic()
            elif time.monotonic() - answered >= self.seconds:
                sys.stderr.write("\n")
                fail_now(self.message())

    def __enter__(self):
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()


@contextlib.contextmanager
def cluster(opts: RayOptions):
    """Ray joined for the block and left after it. With the head's address known: joined within
    opts.connect_timeout (twice: the port, then Ray's handshake), and watched meanwhile (HeadWatch)."""
    address = opts.address or os.environ.get("RAY_ADDRESS")  # the one ray.init joins
    head = head_of(address)
    if head is None:  # Ray finds or starts a cluster on this host: no address to wait for or watch
        try:
            ray, watch = connect(opts.address), contextlib.nullcontext()
        except ConnectionError as e:  # `auto` with no cluster on this host: Ray's first line says so
            raise ValueError(f"--address {address}: {str(e).strip().splitlines()[0]} (start one with `ray start "
                             f"--head`, or give the head's HOST:PORT)") from None
    else:
        wait_for_head(address, head, opts.connect_timeout)
        with exit_after(opts.connect_timeout, unreachable(address, head, opts.connect_timeout)):
            ray = connect(opts.address)
        seconds = min(opts.connect_timeout, LOST_AFTER_MAX)
        watch = HeadWatch(head, seconds, lambda: f"lost the Ray cluster at {address}: its head has not answered "
                                                 f"for {seconds:g} s (stopped, or the network is down); {opts.kept()}")
    try:
        with watch:
            yield ray
    finally:
        ray.shutdown()  # ends this job: its actors go, the cluster stays


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


def run_blocks(ray, blocks: List[Dict], worker: type, worker_kwargs: Dict, opts: RayOptions,
               on_result: Callable, claim_dir: Path) -> int:
    """Sends every block (a dict with a "key") through a pool of `worker` actors on the cluster joined by
    `ray` (cluster()) and calls on_result(key, result) in the driver as each finishes (completion order);
    a data error raised by a worker is raised here. Returns the number of workers."""
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
