"""A throwaway one-host Ray cluster for the tests and benchmarks of `--engine ray` (users start theirs with
`ray start`, docs/describe-and-embed.md#on-a-ray-cluster).

`ray start --head --block` in a session of its own, advertised on 127.0.0.1, every port a free one and its
own temp folder (other clusters may run on the same host), and on exit every process of that session killed
(the head, GCS, raylet and the workers keep the session): targeted, and instant where `ray stop` would stop
every Ray on the host and a SIGTERM drains for half a minute.
"""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional


# For every process of a test cluster, its head and its drivers: the node advertises and binds 127.0.0.1
# (on Linux Ray otherwise replaces a loopback --node-ip-address by the host's routable address and listens
# on every interface), and token authentication is off whatever ~/.ray/auth_token a user has (else the
# head demands a token the drivers do not send: InvalidAuthToken).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


_HEADS: Dict[str, int] = {}  # address -> the session (pid of its `ray start`) of each running local_cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _live_session_members(sid: int) -> List[int]:
    pids = []
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text() if d.name.isdigit() else ""
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split() if stat else []  # after "pid (comm)": state ppid pgrp session
        if fields and int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(d.name))
    return pids


def kill_session(sid: int, timeout: float = 30) -> None:
    """SIGKILL to every live process of session `sid`, until none is left (zombies aside)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = _live_session_members(sid)
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


@contextlib.contextmanager
def local_cluster(num_cpus: int = 2, env: Optional[Dict[str, str]] = None, cwd=None,
                  object_store_bytes: int = 300_000_000) -> Iterator[str]:
    """Yields the address (127.0.0.1:PORT) to pass as --address, from a process whose environment has
    LOOPBACK_ENV."""
    temp = tempfile.mkdtemp(prefix="ray_t_", dir="/tmp")  # short: Ray's unix sockets live under it
    port = free_port()
    address = f"127.0.0.1:{port}"
    ports = [f"--{name}={free_port()}" for name in (
        "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "node-manager-port", "object-manager-port")]
    log_path = Path(temp) / "start.log"
    with open(log_path, "w") as log:
        head = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}", *ports,
             "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={temp}", f"--object-store-memory={object_store_bytes}"],
            env=dict(os.environ if env is None else env, **LOOPBACK_ENV), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log_path.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        _HEADS[address] = head.pid
        yield address
    finally:
        _HEADS.pop(address, None)
        kill_session(head.pid)
        head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def kill_cluster(address: str) -> None:
    """Ends a local_cluster at once, head and workers, as a crashed host would (the driver is not in its session)."""
    kill_session(_HEADS[address])
