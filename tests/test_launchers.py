"""Launchers (distributed.py): the world, rank and device each process gets under msrun, a rank table,
mpirun and a plain start; init() exactly when the process joins a group; every inconsistent environment
refused with one line that names the variable. MindSpore's init/get_rank/get_group_size are replaced
(no process group is formed: tests/test_distributed.py runs the real msrun path)."""
import json
import subprocess
import sys

import pytest

import mindspore as ms
import mindspore.communication as comm

from conftest import CLI_ENV, ROOT
from ms_gpt4image import compat, distributed
from ms_gpt4image.distributed import LaunchError, World, detect_launch, init_distributed

LAUNCH_VARS = ("MS_ROLE", "MS_WORKER_NUM", "MS_NODE_ID", "MS_SCHED_HOST", "MS_SCHED_PORT", "RANK_ID", "RANK_SIZE",
               "DEVICE_ID", "RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH", "OMPI_COMM_WORLD_SIZE",
               "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMMAND", "PMIX_RANK")


@pytest.fixture
def env(monkeypatch):
    """A clean launch environment; returns a setter for the variables of one process."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)

    def set_env(**values):
        for name in LAUNCH_VARS:
            monkeypatch.delenv(name, raising=False)
        for name, value in values.items():
            monkeypatch.setenv(name, str(value))
    return set_env


@pytest.fixture
def mindspore_group(monkeypatch):
    """MindSpore's group calls replaced: `joined` is what get_rank/get_group_size answer after init()
    (None: the rank and size the launcher's variables give); records init, device and parallel-mode calls."""
    calls = {"init": 0, "device": [], "parallel": [], "joined": None}

    def init(backend_name=None):
        calls["init"] += 1

    def answer(i):
        def get():
            assert calls["init"], "get_rank/get_group_size before init()"
            if calls["joined"] is not None:
                return calls["joined"][i]
            launch = detect_launch()
            return (launch.rank if launch.rank is not None else 0, launch.size)[i]
        return get
    monkeypatch.setattr(comm, "init", init)
    monkeypatch.setattr(comm, "get_rank", answer(0))
    monkeypatch.setattr(comm, "get_group_size", answer(1))
    monkeypatch.setattr(distributed, "set_device_id",
                        lambda target, device_id: calls["device"].append((target, device_id)))
    monkeypatch.setattr(ms, "reset_auto_parallel_context", lambda: None)
    monkeypatch.setattr(ms, "set_auto_parallel_context", lambda **kw: calls["parallel"].append(kw))
    return calls


def rank_table(tmp_path, servers=1, per_server=8, name="rank_table.json"):
    """A version 1.0 rank table (server_list[].device[]), as in MindSpore's rank-table tutorial."""
    table = {"version": "1.0", "server_count": str(servers), "status": "completed", "server_list": [
        {"server_id": f"10.0.0.{s}", "host_nic_ip": "reserve",
         "device": [{"device_id": str(d), "device_ip": f"192.{d}.0.{s}", "rank_id": str(s * per_server + d)}
                    for d in range(per_server)]} for s in range(servers)]}
    path = tmp_path / name
    path.write_text(json.dumps(table))
    return path


# --- what each process gets -------------------------------------------------------------------------


def test_a_plain_process_is_a_world_of_one(env, mindspore_group):
    world = init_distributed(device_target="Ascend")
    assert (world.rank, world.size, world.launcher) == (0, 1, "single")
    assert mindspore_group["init"] == 0 and not mindspore_group["device"] and not mindspore_group["parallel"]
    assert World() == World(0, 1) and World(size=4, rank=1).shard == dict(num_shards=4, shard_id=1)


def test_rank_table_every_process_of_the_shell_loop(env, mindspore_group, tmp_path, capsys):
    """The tutorial's loop: RANK_TABLE_FILE and RANK_SIZE=16 for all, RANK_ID and DEVICE_ID per process
    (two servers of 8: the second server's ranks 8-15 run on its devices 0-7)."""
    table = rank_table(tmp_path, servers=2)
    for rank in range(16):
        env(RANK_TABLE_FILE=table, RANK_SIZE=16, RANK_ID=rank, DEVICE_ID=rank % 8)
        world = init_distributed(device_target="Ascend")
        assert (world.rank, world.size, world.device_id, world.launcher) == (rank, 16, rank % 8, "rank table")
        assert world.shard == dict(num_shards=16, shard_id=rank)
        assert mindspore_group["device"][-1] == ("Ascend", rank % 8)  # set before init()
    assert mindspore_group["init"] == 16
    assert mindspore_group["parallel"][-1] == dict(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                                   device_num=16)
    assert "launch: rank table, rank 15 of 16, device 7" in capsys.readouterr().out.splitlines()


def test_rank_table_device_from_the_table_and_the_older_variable_name(env, mindspore_group, tmp_path):
    table = rank_table(tmp_path)
    env(MINDSPORE_HCCL_CONFIG_PATH=table, RANK_SIZE=8, RANK_ID=5)  # no DEVICE_ID: the table's entry for rank 5
    world = init_distributed(device_target="Ascend")
    assert (world.rank, world.size, world.device_id) == (5, 8, 5)
    assert mindspore_group["device"] == [("Ascend", 5)]


def test_mpirun_rank_and_device_from_openmpi(env, mindspore_group):
    """Two nodes of 4: global rank 5 is local rank 1 on the second node, device 1. MindSpore's import
    copies OpenMPI's variables into RANK_ID/RANK_SIZE/DEVICE_ID; that does not make it a rank-table launch."""
    mpi = dict(OMPI_COMM_WORLD_SIZE=8, OMPI_COMM_WORLD_RANK=5, OMPI_COMM_WORLD_LOCAL_RANK=1, OMPI_COMMAND="python",
               PMIX_RANK=5)
    for target, device in (("Ascend", 1), ("GPU", 1), ("CPU", None)):
        env(**mpi, RANK_ID=5, RANK_SIZE=8, DEVICE_ID=1)
        world = init_distributed(device_target=target)
        assert (world.rank, world.size, world.local_rank, world.device_id) == (5, 8, 1, device)
        assert world.launcher == "mpirun"
    assert mindspore_group["device"] == [("Ascend", 1), ("GPU", 1)]  # none on CPU
    env(**mpi)  # without MindSpore's copies: the device is the local rank
    assert init_distributed(device_target="Ascend").device_id == 1


def test_msrun_worker_and_scheduler(env, mindspore_group, capsys):
    """msrun exports MS_ROLE, MS_WORKER_NUM, RANK_SIZE, RANK_ID (when known) and DEVICE_ID (the worker's
    index on its node) and assigns the device itself: nothing is set here."""
    env(MS_ROLE="MS_WORKER", MS_WORKER_NUM=4, RANK_SIZE=4, RANK_ID=2, DEVICE_ID=2, MS_NODE_ID=2)
    world = init_distributed(device_target="Ascend")
    assert (world.rank, world.size, world.local_rank, world.device_id, world.launcher) == (2, 4, 2, 2, "msrun")
    assert mindspore_group["device"] == [] and mindspore_group["init"] == 1
    assert "launch: msrun, rank 2 of 4, local rank 2, device 2" in capsys.readouterr().out
    # several nodes without --node_rank: no RANK_ID until init() assigns it
    env(MS_ROLE="MS_WORKER", MS_WORKER_NUM=16, RANK_SIZE=16, DEVICE_ID=3)
    mindspore_group["joined"] = (11, 16)
    assert init_distributed(device_target="Ascend").rank == 11
    assert "launch: msrun, rank 11 of 16, local rank 3, device 3" in capsys.readouterr().out
    # the scheduler runs the same command and must reach init(); it prints no launch line
    mindspore_group["joined"] = (0, 1)
    env(MS_ROLE="MS_SCHED", MS_WORKER_NUM=4, RANK_SIZE=4, RANK_ID=0)
    init_distributed(device_target="CPU")
    assert mindspore_group["init"] == 3 and "launch:" not in capsys.readouterr().out


@pytest.mark.parametrize("variables, joins", [
    ({}, False),
    ({"RANK_SIZE": 1, "RANK_ID": 0}, False),
    ({"RANK_TABLE_FILE": "TABLE1", "RANK_SIZE": 1, "RANK_ID": 0, "DEVICE_ID": 0}, False),
    ({"RANK_TABLE_FILE": "TABLE8", "RANK_SIZE": 8, "RANK_ID": 0, "DEVICE_ID": 0}, True),
    ({"OMPI_COMM_WORLD_SIZE": 1, "OMPI_COMM_WORLD_RANK": 0, "OMPI_COMM_WORLD_LOCAL_RANK": 0}, False),
    ({"OMPI_COMM_WORLD_SIZE": 2, "OMPI_COMM_WORLD_RANK": 1, "OMPI_COMM_WORLD_LOCAL_RANK": 1, "OMPI_COMMAND": "python",
      "PMIX_RANK": 1}, True),
    ({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": 2, "RANK_ID": 1, "DEVICE_ID": 1}, True),
    ({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": 1, "RANK_ID": 0, "DEVICE_ID": 0}, True),  # msrun: always (scheduler)
])
def test_init_exactly_when_the_process_joins_a_group(env, mindspore_group, tmp_path, variables, joins):
    tables = {"TABLE1": rank_table(tmp_path, per_server=1, name="t1.json"), "TABLE8": rank_table(tmp_path)}
    env(**{k: tables.get(v, v) if isinstance(v, str) else v for k, v in variables.items()})
    world = init_distributed(device_target="Ascend")
    assert mindspore_group["init"] == int(joins)
    assert world.distributed == (joins and world.size > 1)


# --- refusals: one line naming the variable, before any group is joined --------------------------------


REFUSALS = [
    ("no table, RANK_SIZE=8", {"RANK_SIZE": 8, "RANK_ID": 3, "DEVICE_ID": 3}, "RANK_SIZE=8"),
    ("RANK_ID without RANK_SIZE", {"RANK_ID": 3}, "RANK_ID=3"),
    ("non-integer RANK_SIZE", {"RANK_SIZE": "eight"}, "RANK_SIZE='eight'"),
    ("RANK_SIZE=0", {"RANK_SIZE": 0}, "RANK_SIZE=0"),
    ("rank outside the world", {"RANK_TABLE_FILE": "TABLE8", "RANK_SIZE": 8, "RANK_ID": 8, "DEVICE_ID": 0},
     "RANK_ID=8"),
    ("missing table file", {"RANK_TABLE_FILE": "MISSING", "RANK_SIZE": 8, "RANK_ID": 0, "DEVICE_ID": 0},
     "RANK_TABLE_FILE="),
    ("table of 8, RANK_SIZE=16", {"RANK_TABLE_FILE": "TABLE8", "RANK_SIZE": 16, "RANK_ID": 0, "DEVICE_ID": 0},
     "RANK_SIZE=16"),
    ("table without RANK_SIZE", {"RANK_TABLE_FILE": "TABLE8", "RANK_ID": 0, "DEVICE_ID": 0}, "RANK_SIZE"),
    ("table without RANK_ID", {"RANK_TABLE_FILE": "TABLE8", "RANK_SIZE": 8, "DEVICE_ID": 0}, "RANK_ID"),
    ("non-integer DEVICE_ID", {"RANK_TABLE_FILE": "TABLE8", "RANK_SIZE": 8, "RANK_ID": 0, "DEVICE_ID": "x"},
     "DEVICE_ID='x'"),
    ("rank not in the table", {"RANK_TABLE_FILE": "SECOND_SERVER", "RANK_SIZE": 8, "RANK_ID": 3, "DEVICE_ID": 3},
     "RANK_ID=3"),
    ("no device for a rank", {"RANK_TABLE_FILE": "NOT_JSON", "RANK_SIZE": 8, "RANK_ID": 3}, "DEVICE_ID"),
    ("mpirun rank outside", {"OMPI_COMM_WORLD_SIZE": 4, "OMPI_COMM_WORLD_RANK": 4, "OMPI_COMMAND": "python",
                             "PMIX_RANK": 4}, "OMPI_COMM_WORLD_RANK=4"),
    ("mpirun with a rank table", {"OMPI_COMM_WORLD_SIZE": 8, "OMPI_COMM_WORLD_RANK": 0, "OMPI_COMMAND": "python",
                                  "PMIX_RANK": 0, "RANK_TABLE_FILE": "TABLE8"}, "RANK_TABLE_FILE="),
    ("mpirun not recognisable by MindSpore", {"OMPI_COMM_WORLD_SIZE": 8, "OMPI_COMM_WORLD_RANK": 0}, "OMPI_COMMAND"),
    ("msrun without MS_WORKER_NUM", {"MS_ROLE": "MS_WORKER"}, "MS_WORKER_NUM"),
    ("non-integer MS_WORKER_NUM", {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "abc"}, "MS_WORKER_NUM='abc'"),
    ("msrun rank outside", {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": 4, "RANK_ID": 5}, "RANK_ID=5"),
]


@pytest.mark.parametrize("what, variables, named", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_inconsistent_variables_are_refused_before_joining(env, mindspore_group, tmp_path, what, variables, named):
    not_json = tmp_path / "not_json.json"
    not_json.write_text("this is not JSON")
    second = tmp_path / "second.json"  # one server whose ranks are 8-15
    second.write_text(json.dumps({"version": "1.0", "server_list": [{"device": [
        {"device_id": str(d), "rank_id": str(8 + d)} for d in range(8)]}]}))
    paths = {"TABLE8": rank_table(tmp_path), "MISSING": tmp_path / "missing.json", "NOT_JSON": not_json,
             "SECOND_SERVER": second}
    env(**{k: paths.get(v, v) if isinstance(v, str) else v for k, v in variables.items()})
    with pytest.raises(ValueError) as refused:
        init_distributed(device_target="Ascend")
    message = str(refused.value)
    assert isinstance(refused.value, LaunchError) and named in message and "\n" not in message, message
    assert mindspore_group["init"] == 0 and not mindspore_group["device"] and not mindspore_group["parallel"]


def test_rank_table_is_ascend_only(env, mindspore_group, tmp_path):
    env(RANK_TABLE_FILE=rank_table(tmp_path), RANK_SIZE=8, RANK_ID=0, DEVICE_ID=0)
    with pytest.raises(LaunchError, match="RANK_TABLE_FILE=.*GPU"):
        init_distributed(device_target="GPU")
    env(RANK_SIZE=8)
    with pytest.raises(LaunchError, match="RANK_SIZE=8.*msrun or mpirun"):
        init_distributed(device_target="GPU")


def test_a_table_that_is_not_json_is_left_to_hccl(env, mindspore_group, tmp_path):
    path = tmp_path / "table.json"
    path.write_text("not JSON")
    env(RANK_TABLE_FILE=path, RANK_SIZE=8, RANK_ID=2, DEVICE_ID=2)
    assert init_distributed(device_target="Ascend").rank == 2


def test_a_group_that_disagrees_with_the_launcher_is_refused(env, mindspore_group, tmp_path):
    env(RANK_TABLE_FILE=rank_table(tmp_path), RANK_SIZE=8, RANK_ID=3, DEVICE_ID=3)
    mindspore_group["joined"] = (0, 1)
    with pytest.raises(LaunchError, match="rank 0 of 1.*RANK_ID=3.*RANK_SIZE=8"):
        init_distributed(device_target="Ascend")


def test_the_cli_prints_one_line_and_exits_2_before_any_work(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    out = tmp_path / "out"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\noutput_dir: {out}\nmodel: simple_cnn\n")
    run_env = {k: v for k, v in CLI_ENV.items() if k not in LAUNCH_VARS}
    proc = subprocess.run([sys.executable, "-m", "ms_gpt4image", "train", "-c", str(cfg)], cwd=ROOT,
                          env=dict(run_env, RANK_SIZE="8", RANK_ID="1"), capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "RANK_SIZE=8" in errors[0], proc.stderr[-2000:]
    assert not out.exists()


# --- compat.set_device_id ----------------------------------------------------------------------------


@pytest.fixture
def device_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(ms, "get_context", lambda key: 0 if key == "device_id" else "CPU")
    monkeypatch.setattr(ms, "set_context", lambda **kw: calls.append(("set_context", kw)))
    monkeypatch.setattr(ms, "set_device", raising=False,
                        value=lambda target, device_id=None: calls.append(("set_device", target, device_id)))
    return calls


def test_set_device_id_from_2_5_is_set_device(device_calls):
    compat.set_device_id("Ascend", 3)
    compat.set_device_id("CPU", 3)  # no device id on CPU
    compat.set_device_id("GPU", 0)  # MindSpore already holds it
    assert device_calls == [("set_device", "Ascend", 3)]


def test_set_device_id_after_set_device_without_an_id(device_calls, monkeypatch):
    def already_set(target, device_id=None):
        raise RuntimeError("The 'mindspore.set_device' can not be modified.")
    monkeypatch.setattr(ms, "set_device", already_set)
    compat.set_device_id("Ascend", 3)
    assert device_calls == [("set_context", {"device_id": 3})]


def test_set_device_id_before_2_5_is_set_context(device_calls, monkeypatch):
    monkeypatch.delattr(ms, "set_device")
    compat.set_device_id("GPU", 2)
    assert device_calls == [("set_context", {"device_id": 2})]
