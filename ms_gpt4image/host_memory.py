"""Host shared memory for the input pipeline: what MindSpore allocates, checked before training starts.

With `python_multiprocessing: true` a map or batch op runs its Python work in worker processes and moves
every row through shared memory. How, in MindSpore 2.7 (`mindspore/dataset/engine/datasets.py`:
`_PythonMultiprocessing.launch` / `_worker_loop`; C++ `SharedMemoryQueue`, `core/shared_memory_queue.cc`):
each worker has one key (ftok) and one System V segment (shmget), created by the side that sends and
grown (removed and created again) whenever a message does not fit. The main process writes a worker's
input into it, the worker writes its output into the same segment, one message at a time, so a worker
holds one segment of max(input, output) bytes, its largest so far. Per op: workers x that, once running.
While a segment is replaced (the worker's output outgrows the main process's input segment, which stays
until the main process reads the output) a worker briefly holds both: input + output, at most, in the
first batches (measured: the ConvNeXt pipeline peaked at 1.4x its steady size). Only `per_batch_map`'s
input columns travel, and a map runs its whole op list, MindSpore's C ops included, in the worker
(measured). Not involved: `max_rowsize` (default None: dynamic; MindSpore checks /dev/shm only for a fixed
max_rowsize), `ds.config.set_prefetch_size` and the op connectors (in process memory: measured, one
segment per worker at the default prefetch of 16), `set_enable_shared_mem` (gates only that check).
Thread mode (`python_multiprocessing: false`) shares the process: no shared memory.

System V segments are not files in /dev/shm: a container's small /dev/shm (Docker's default 64 MB) does
not limit them (measured: 77 MB batches through a 64 MB /dev/shm). They are limited by kernel.shmmax (one
segment: shmget fails with errno 22, EINVAL), kernel.shmall (all segments, in pages: errno 28, ENOSPC) and
the node's memory (the container's memory limit counts them). A new IPC namespace (a container) starts
from the kernel's defaults, effectively unlimited since Linux 3.16, so on 2.7 what runs out is memory or a
tightened sysctl. For MindSpore releases without that C++ queue (no `mindspore._c_dataengine.
SharedMemoryQueue`; not checked here, only 2.7.2 installs) rows are taken to go through Python's
`_SharedQueue` in /dev/shm, as 2.7's GeneratorDataset still does, and this module applies MindSpore's own
`_check_shm_usage` formula, workers x (queue 1 + 2) x (input + output) per op, to /dev/shm's free space.

What the recipes send per worker (S = image_size, B = batch_size, K classes, D text-embedding width, E one
encoded image, W = world size, R = repeated_aug):
* train batch with mixup/cutmix, Python transforms (`transforms: imagenet`) and 2 or more workers (the
  batch op's workers make the rows: data.rows_in_batch_workers): in B x (E + 4 + 4 D), out B x (image +
  4 K + 4 D): the mixed images, soft targets and text embeddings;
* otherwise a train map: in E, out one image: 3 S^2 x 4 bytes (float32) or x 1 (uint8, device_input.py);
  and with mixup/cutmix a train batch (per_batch_map): in B x (image + 4), out B x (image + 4 K): the
  mixed images and soft targets; without mixup the batch op runs in C++ threads and needs none;
* train batch with repeated augmentation (repeated_aug.py): in ceil(B W / R) records x (E + 4 + 4 D), out
  B x (image + label + 4 D);
* eval map: in E, out 3 S^2 x 4 (float32 always).
Encoded images (E) vary: a map's segments grow to the largest one its worker meets (a few MB for the
largest ImageNet JPEGs); without `encoded_bytes` an uncompressed uint8 crop, 3 S^2, stands in.
The DeiT recipe (B 128, S 224, 8 workers, R 3, W 8, D 512): 8 x 128 x (602,112 + 4,000 + 2,048) bytes
+ the eval map, 598 MiB per rank and 4.7 GiB per node of 8 once running, up to 998 MiB per rank and
7.8 GiB per node in the first batches (tests/test_host_memory.py works it through by hand).
"""
import math
import os
import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from .batch_layout import device_rows

THRESHOLD = 0.8  # MindSpore's _check_shm_usage refuses beyond 80 % of what is free; so do we
MAX_DEVICES_PER_NODE = 8  # MindSpore's own assumption where it does not know (an Ascend server: 8 cards)
_LOCAL_SIZE_VARS = ("MS_LOCAL_WORKER", "OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE")


def transport() -> str:
    """'sysv' (MindSpore's C++ shared-memory queue, 2.7: System V segments) or 'posix' (older releases:
    Python queues over /dev/shm)."""
    import mindspore._c_dataengine as cde
    return "sysv" if hasattr(cde, "SharedMemoryQueue") else "posix"


def local_world_size(world_size: int = 1, env: Optional[Mapping[str, str]] = None) -> int:
    """Ranks on this node: the launcher's local size where it exports one (MS_LOCAL_WORKER,
    OMPI_COMM_WORLD_LOCAL_SIZE, LOCAL_WORLD_SIZE), else min(world_size, 8) (msrun 2.7 exports no local
    count; MindSpore's _check_shm_usage assumes the same 8)."""
    env = os.environ if env is None else env
    for name in _LOCAL_SIZE_VARS:
        value = (env.get(name) or "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return max(1, min(world_size, MAX_DEVICES_PER_NODE))


def _manifest(cfg: Dict) -> Dict:
    try:
        import json
        return json.loads((Path(cfg["data_dir"]) / "manifest.json").read_text())
    except (OSError, TypeError, ValueError):
        return {}


def _pool(name: str, workers: int, in_bytes: int, out_bytes: int) -> Dict:
    """One worker pool: bytes per message in and out, its segment once running (max) and at most
    while the segment is replaced (in + out)."""
    return {"op": name, "workers": workers, "in_bytes": int(in_bytes), "out_bytes": int(out_bytes),
            "segment_bytes": int(max(in_bytes, out_bytes)), "peak_bytes": int(in_bytes + out_bytes)}


def pipeline_pools(cfg: Dict, world_size: int = 1, num_classes: Optional[int] = None,
                   embedding_dim: Optional[int] = None, encoded_bytes: Optional[int] = None) -> List[Dict]:
    """The worker pools that move rows through shared memory for one rank (train and eval pipelines of
    data.create_dataset), each with its workers and bytes in and out per message. Empty in thread mode.
    num_classes / embedding_dim default to the manifest of `data_dir`, else 1000 / 768; encoded_bytes (the
    largest encoded image) to 3 S^2."""
    if not cfg["python_multiprocessing"]:
        return []
    from .data import rows_in_batch_workers
    from .device_input import bytes_per_image
    manifest = _manifest(cfg)
    k = num_classes or cfg["num_classes"] or manifest.get("num_classes") or 1000
    d = embedding_dim or (manifest.get("embedding") or {}).get("dim") or 768
    # a training batch carries the micro-batches of one update (batch_layout.py)
    size, batch, workers = cfg["image_size"], device_rows(cfg), cfg["num_parallel_workers"]
    enc_train = enc_eval = encoded_bytes or 3 * size * size
    image, eval_image = bytes_per_image(cfg, train=True), bytes_per_image(cfg, train=False)
    mixing = cfg["mixup"] > 0 or cfg["cutmix"] > 0
    label = 4 * k if mixing else 4  # soft targets (float32) after mixup, int32 labels otherwise
    pools = []
    if cfg["repeated_aug"] > 1:
        per_step = -(-batch * world_size // cfg["repeated_aug"])
        pools.append(_pool("train batch (repeated augmentation)", workers, per_step * (enc_train + 4 + 4 * d),
                           batch * (image + label + 4 * d)))
    elif rows_in_batch_workers(cfg, train=True):
        pools.append(_pool("train batch (rows and mixup)", workers, batch * (enc_train + 4 + 4 * d),
                           batch * (image + label + 4 * d)))
    else:
        pools.append(_pool("train map", workers, enc_train, image))
        if mixing:
            pools.append(_pool("train batch (mixup)", workers, batch * (image + 4), batch * (image + label)))
    pools.append(_pool("eval map", workers, enc_eval, eval_image))
    return pools


def estimate(cfg: Dict, world_size_local: int = 1, world_size: Optional[int] = None, kind: Optional[str] = None,
             **sizes) -> Dict:
    """Shared memory per rank and per node (`world_size_local` ranks) for this config's pipelines: once
    running (`per_rank_bytes`, `per_node_bytes`) and at most, in the first batches (`peak_per_rank_bytes`,
    `peak_per_node_bytes`: what the check compares)."""
    kind = kind or transport()
    world_size = world_size or world_size_local
    pools = pipeline_pools(cfg, world_size, **sizes)
    if kind == "sysv":
        per_rank = sum(p["workers"] * p["segment_bytes"] for p in pools)
        peak = sum(p["workers"] * p["peak_bytes"] for p in pools)
    else:  # MindSpore's _check_shm_usage: workers x (queue_size 1 + 2) x (in + out)
        per_rank = peak = sum(p["workers"] * 3 * (p["in_bytes"] + p["out_bytes"]) for p in pools)
    return {"transport": kind, "pools": pools, "ranks_per_node": world_size_local, "per_rank_bytes": per_rank,
            "per_node_bytes": per_rank * world_size_local, "peak_per_rank_bytes": peak,
            "peak_per_node_bytes": peak * world_size_local,
            "largest_segment_bytes": max((p["segment_bytes"] for p in pools), default=0)}


def _read_int(path: str) -> Optional[int]:
    try:
        text = Path(path).read_text().split()[0]
        return int(text) if text.isdigit() else None
    except (OSError, IndexError, ValueError):
        return None


def sysv_limits() -> Dict:
    """This node's limits on System V shared memory, in bytes (None where unknown): shmmax (one segment),
    shmall (all), in use now, MemAvailable, and the memory cgroup's headroom (v2 or v1)."""
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    shmall = _read_int("/proc/sys/kernel/shmall")
    used = 0
    try:
        with open("/proc/sysvipc/shm") as f:
            next(f)
            used = sum(int(line.split()[3]) for line in f if line.strip())
    except (OSError, StopIteration, IndexError, ValueError):
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                mem = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    cgroup = None
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        lim, use = _read_int(limit), _read_int(usage)
        if lim is not None and use is not None and lim < 2 ** 60:  # "max" / a huge v1 number: no limit
            cgroup = max(lim - use, 0)
            break
    return {"shmmax": _read_int("/proc/sys/kernel/shmmax"),
            "shmall": None if shmall is None else min(shmall, 2 ** 63 // page) * page,
            "used": used, "mem_available": mem, "cgroup_free": cgroup}


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _shm_size_flag(n: float) -> str:
    """--shm-size for `n` bytes within the 80 % threshold, rounded up to whole GiB (or 256 MiB steps)."""
    need = n / THRESHOLD
    if need > 2 ** 30:
        return f"{math.ceil(need / 2 ** 30)}g"
    return f"{256 * math.ceil(need / 2 ** 28)}m"


def check_shared_memory(cfg: Dict, world_size_local: Optional[int] = None, shm_path: str = "/dev/shm", *,
                        world_size: Optional[int] = None, transport_kind: Optional[str] = None, limits: Optional[Dict] = None,
                        **sizes) -> Dict:
    """Estimates the shared memory the train and eval pipelines need on this node and refuses (ValueError,
    one line) where the node cannot give it: needed per rank and per node, what there is, what to change.
    Returns the estimate (with `shm_free`/`shm_total` of `shm_path`, the limits compared, and `line`, a
    one-line summary for the log). `world_size_local`: ranks on this node (None: local_world_size);
    `world_size`: all ranks (default: world_size_local; repeated augmentation reads W B / R records a step);
    `limits`: sysv_limits() values to use instead of this node's (tests)."""
    local = world_size_local or local_world_size(world_size or 1)
    est = estimate(cfg, local, world_size, transport_kind, **sizes)
    try:
        usage = shutil.disk_usage(shm_path)
        est.update(shm_free=usage.free, shm_total=usage.total)
    except OSError:
        est.update(shm_free=None, shm_total=None)
    need, rank_need, workers = est["peak_per_node_bytes"], est["peak_per_rank_bytes"], cfg["num_parallel_workers"]
    ops = ", ".join(f"{p['op']} {p['workers']} x {_size(p['segment_bytes'])}" for p in est["pools"])
    steady = (f", {_size(est['per_node_bytes'])} per node once running" if est["per_node_bytes"] != need else "")
    head = (f"host shared memory: the input pipelines need {_size(rank_need)} per rank, {_size(need)} per node "
            f"({local} rank{'s' if local != 1 else ''}{steady}{'; ' + ops if ops else ''})")
    fixes = (f"lower num_parallel_workers (now {workers}) or batch_size, or set python_multiprocessing: false "
             f"(worker threads: no shared memory)")
    problem = None
    if need == 0:
        est["line"] = head + ": none (python_multiprocessing: false)"
        return est
    if est["transport"] == "sysv":
        lim = dict(sysv_limits(), **(limits or {}))
        est["limits"] = lim
        caps = {"kernel.shmall": None if lim["shmall"] is None else lim["shmall"] - lim["used"],
                "free memory": lim["mem_available"], "the memory cgroup's headroom": lim["cgroup_free"]}
        known = {k: v for k, v in caps.items() if v is not None}
        where, available = min(known.items(), key=lambda kv: kv[1]) if known else (None, None)
        est["available_bytes"] = available
        if lim["shmmax"] is not None and est["largest_segment_bytes"] > lim["shmmax"]:
            problem = (f"{head} in System V segments, but kernel.shmmax = {_size(lim['shmmax'])} is below one "
                       f"segment ({_size(est['largest_segment_bytes'])}): raise it (`docker run --sysctl "
                       f"kernel.shmmax={est['largest_segment_bytes'] * 2}`, or `sysctl -w` on the host), or {fixes}")
        elif available is not None and need > THRESHOLD * available:
            more = ("raise it (`docker run --sysctl kernel.shmall=PAGES`, or `sysctl -w` on the host)"
                    if where == "kernel.shmall" else "give the node or container more memory")
            problem = (f"{head} in System V segments, but {where} allows {_size(available)} (the pipelines may use "
                       f"{THRESHOLD:.0%}): {more}, or {fixes}")
        where_txt = f"System V, limit {_size(available)} ({where})" if available is not None else "System V"
        est["line"] = f"{head}: {where_txt}; /dev/shm is not used by these queues"
    else:
        free = est["shm_free"]
        est["available_bytes"] = free
        if free is None or need > THRESHOLD * free:
            have = "does not exist" if free is None else f"has {_size(free)} free of {_size(est['shm_total'])}"
            problem = (f"{head} in {shm_path}, but {shm_path} {have} (the pipelines may use {THRESHOLD:.0%}): start "
                       f"the container with `docker run --shm-size={_shm_size_flag(need)}` (Kubernetes: an emptyDir "
                       f"of medium Memory on /dev/shm), or {fixes}")
        est["line"] = f"{head}: {shm_path}, {_size(free or 0)} free"
    if problem:
        raise ValueError(problem)
    return est
