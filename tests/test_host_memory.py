"""host_memory.check_shared_memory: the estimate against a hand computation from MindSpore's allocation,
the one-line refusals, thread mode, the demo config, and the estimate against a measured pipeline."""
import collections
import os
import shutil
import threading
import time

import numpy as np
import pytest

from ms_gpt4image import host_memory as hm
from ms_gpt4image.config import load_config
from ms_gpt4image.data import create_dataset

DiskUsage = collections.namedtuple("DiskUsage", "total used free")
PLENTY = {"shmmax": 2 ** 62, "shmall": 2 ** 62, "used": 0, "mem_available": 2 ** 40, "cgroup_free": None}


def _deit():
    return load_config("configs/imagenet_deit_small.yaml")


def _deit_by_hand(workers=8, batch=128, size=224, world=8, repeats=3, k=1000, d=512, peak=False):
    """MindSpore 2.7: one System V segment per worker of max(message in, message out) bytes; in + out
    at most while it is first sized (`peak`)."""
    image = 3 * size * size * 4                    # float32 CHW (random erasing and mixup: device_normalize off)
    encoded = 3 * size * size                      # no data here: an uncompressed uint8 crop stands in
    per_step = -(-batch * world // repeats)        # 342 records a global step (repeated_aug.py)
    batch_in = per_step * (encoded + 4 + 4 * d)    # image bytes, int32 label, float32 text embedding
    batch_out = batch * (image + 4 * k + 4 * d)    # mixed images, soft targets, embeddings
    if peak:
        return workers * (batch_in + batch_out) + workers * (encoded + image)
    return workers * max(batch_in, batch_out) + workers * max(encoded, image)  # eval: encoded in, float32 out


def test_deit_estimate_is_mindspores_allocation_by_hand():
    est = hm.estimate(_deit(), world_size_local=8, world_size=8, kind="sysv", num_classes=1000, embedding_dim=512)
    per_rank = _deit_by_hand()
    assert per_rank == 8 * 128 * (602112 + 4000 + 2048) + 8 * 602112 == 627_572_736
    assert est["per_rank_bytes"] == per_rank and est["per_node_bytes"] == 8 * per_rank  # 4.7 GiB per node
    assert est["peak_per_rank_bytes"] == _deit_by_hand(peak=True) == 1_046_235_840  # 7.8 GiB per node at most
    assert est["peak_per_node_bytes"] == 8 * _deit_by_hand(peak=True)
    assert [p["op"] for p in est["pools"]] == ["train batch (repeated augmentation)", "eval map"]
    # the releases with Python queues over /dev/shm: MindSpore's _check_shm_usage, workers x 3 x (in + out)
    legacy = hm.estimate(_deit(), 8, 8, kind="posix", num_classes=1000, embedding_dim=512)
    batch_in, batch_out = 342 * (150528 + 4 + 2048), 128 * (602112 + 4000 + 2048)
    assert legacy["per_rank_bytes"] == 8 * 3 * (batch_in + batch_out) + 8 * 3 * (150528 + 602112)


def test_small_dev_shm_refuses_in_one_line_where_rows_go_through_it(monkeypatch):
    """Docker's default 64 MB /dev/shm: refused before training where MindSpore queues rows through
    /dev/shm (releases without the C++ queue); the line names what is needed, what there is, what to do."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(64 * 2 ** 20, 0, 64 * 2 ** 20))
    with pytest.raises(ValueError) as e:
        hm.check_shared_memory(_deit(), 8, world_size=8, transport_kind="posix", num_classes=1000, embedding_dim=512)
    line = str(e.value)
    est = hm.estimate(_deit(), 8, 8, kind="posix", num_classes=1000, embedding_dim=512)
    assert "\n" not in line
    assert f"{hm._size(est['peak_per_rank_bytes'])} per rank, {hm._size(est['peak_per_node_bytes'])} per node" in line
    assert "64.0 MiB free of 64.0 MiB" in line and "--shm-size=" in line and "num_parallel_workers (now 8)" in line
    assert "python_multiprocessing: false" in line


def test_sysv_segments_ignore_dev_shm_but_not_shmmax_shmall_or_memory(monkeypatch):
    """MindSpore 2.7's System V segments pass a 64 MB /dev/shm; kernel.shmmax below one segment, or too
    little kernel.shmall / memory for the node, is refused in one line."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(64 * 2 ** 20, 0, 64 * 2 ** 20))
    kw = dict(world_size=8, transport_kind="sysv", num_classes=1000, embedding_dim=512)
    est = hm.check_shared_memory(_deit(), 8, limits=PLENTY, **kw)
    assert est["per_node_bytes"] == 8 * _deit_by_hand() and "/dev/shm is not used" in est["line"]
    with pytest.raises(ValueError, match=r"kernel\.shmmax = 32\.0 MiB is below one segment \(74\.2 MiB\)"):
        hm.check_shared_memory(_deit(), 8, limits=dict(PLENTY, shmmax=32 * 2 ** 20), **kw)
    with pytest.raises(ValueError) as e:
        hm.check_shared_memory(_deit(), 8, limits=dict(PLENTY, shmall=4 * 2 ** 30), **kw)
    assert "\n" not in str(e.value) and "kernel.shmall allows 4.0 GiB" in str(e.value)
    assert "need 997.8 MiB per rank, 7.8 GiB per node (8 ranks, 4.7 GiB per node once running" in str(e.value)
    with pytest.raises(ValueError, match="free memory allows 2.0 GiB"):
        hm.check_shared_memory(_deit(), 8, limits=dict(PLENTY, mem_available=2 * 2 ** 30), **kw)
    assert hm.check_shared_memory(_deit(), 1, limits=dict(PLENTY, mem_available=2 * 2 ** 30), **kw)  # one rank fits


@pytest.mark.parametrize("kind", ["sysv", "posix"])
def test_thread_mode_needs_none(monkeypatch, kind):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(2 ** 20, 2 ** 20, 0))
    cfg = load_config("configs/imagenet_deit_small.yaml", ["python_multiprocessing=false"])
    est = hm.check_shared_memory(cfg, 8, transport_kind=kind, limits=dict(PLENTY, shmall=0, mem_available=0))
    assert est["per_node_bytes"] == 0 and est["pools"] == [] and "none" in est["line"]


def test_the_demo_config_passes_here():
    est = hm.check_shared_memory(load_config("configs/demo_fmnist.yaml"))
    assert est["per_node_bytes"] == 0 and est["pools"] == []  # worker threads


def test_ranks_per_node_from_the_launcher():
    assert hm.local_world_size(16, {"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}) == 4
    assert hm.local_world_size(16, {"MS_LOCAL_WORKER": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}) == 2
    assert hm.local_world_size(16, {}) == 8 and hm.local_world_size(2, {}) == 2  # msrun: min(world, 8)


def _ours_sysv_bytes(pid: int) -> int:
    """Bytes of the System V segments created by `pid` or its children (/proc/sysvipc/shm: cpid)."""
    total = 0
    with open("/proc/sysvipc/shm") as f:
        header = f.readline().split()
        size_at, cpid_at = header.index("size"), header.index("cpid")
        for line in f:
            fields = line.split()
            cpid = int(fields[cpid_at])
            if cpid != pid:
                try:
                    ppid = int(open(f"/proc/{cpid}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid != pid:
                    continue
            total += int(fields[size_at])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/sysvipc/shm"), reason="needs Linux /proc/sysvipc")
def test_estimate_matches_a_measured_pipeline(packed):
    """The ConvNeXt recipe's pipeline (2 batch worker processes that make and mix the rows, float32) at
    64 px: the peak of the System V segments it creates is the estimate's train pool (+ message headers)."""
    cfg = load_config("configs/imagenet_convnext_tiny.yaml",
                      [f"data_dir={packed / 'data'}", "image_size=64", "batch_size=16", "num_parallel_workers=2"])
    assert cfg["python_multiprocessing"] and cfg["mixup"] > 0
    from mindspore.mindrecord import FileReader
    from ms_gpt4image.data import load_manifest, split_files
    encoded = 0
    for f in split_files(cfg["data_dir"], load_manifest(cfg["data_dir"]), "train"):
        reader = FileReader(f, columns=["image"])
        encoded = max([encoded] + [len(bytes(r["image"])) for r in reader.get_next()])
        reader.close()
    est = hm.estimate(cfg, 1, kind="sysv", encoded_bytes=encoded)  # the largest PNG (<1 KB)
    pools = [p for p in est["pools"] if p["op"].startswith("train")]
    train = sum(p["workers"] * p["segment_bytes"] for p in pools)
    assert [p["op"] for p in pools] == ["train batch (rows and mixup)"]
    assert train == 2 * 16 * (3 * 64 * 64 * 4 + 4 * 10 + 4 * 384)  # out: images, soft targets, embeddings
    most = sum(p["workers"] * p["peak_bytes"] for p in pools)
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _ours_sysv_bytes(os.getpid()))
            time.sleep(0.002)

    data, _ = create_dataset(cfg, "train")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    running = []
    try:
        for image, _, _ in data.create_tuple_iterator(num_epochs=1, output_numpy=True):
            assert image.dtype == np.float32
            time.sleep(0.05)  # let the sampler see every segment
            running.append(_ours_sysv_bytes(os.getpid()))
    finally:
        stop.set()
        sampler.join()
    # the estimate counts the arrays' bytes; each array in a message also has a header (measured: 146 B for
    # the 3 out arrays of a worker), allowed at 64 B per array: 3 out, and 3 x 16 rows in
    header = 64
    assert len(running) == 5 and train <= running[-1] <= train + 2 * 3 * header, running
    # at most in + out per worker, in the first batches (seen: most + 2,500 B once in a loaded run)
    assert train <= peak[0] <= most + 2 * (3 + 3 * 16) * header, (peak[0], train, most)
