"""A new `train` into an output_dir that holds another run: refused with one line before any work (the
run's files unchanged), `--overwrite` starts again and says what it removed, `--resume` continues; a folder
without a run's files is no obstacle; every rank follows rank 0's verdict (run_dir.py)."""
import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import CLI_ENV, ROOT, run_cli, simple_cnn_config
from ms_gpt4image.distributed import World
from ms_gpt4image.run_dir import OutputDirInUse, check_output_dir, describe_run, run_files

RUN_FILES = ["last.ckpt", "best.ckpt", "log.jsonl", "summary.json"]


@pytest.fixture(scope="module")
def finished(packed, tmp_path_factory):
    """A finished 2-epoch simple_cnn run: {cfg, run}. Tests copy it before running into it."""
    d = tmp_path_factory.mktemp("finished")
    cfg = simple_cnn_config(d, packed, "run")
    run_cli("-m", "ms_gpt4image", "train", "-c", cfg)
    return {"cfg": cfg, "run": d / "run"}


def _copy(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished["run"], run)
    return run


def _train(*args):
    return subprocess.run([sys.executable, "-m", "ms_gpt4image", "train", *map(str, args)], cwd=ROOT, env=CLI_ENV,
                          capture_output=True, text=True, timeout=600)


def _snapshot(run):
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def _log(run):
    return [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]


def test_a_new_run_of_another_model_is_refused_with_one_line_and_nothing_changes(finished, tmp_path):
    run = _copy(finished, tmp_path)
    before = _snapshot(run)
    assert set(RUN_FILES + ["config.yaml"]) <= set(before)
    p = _train("-c", finished["cfg"], "--set", f"output_dir={run}", "--set", "model=resnet18_cifar")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    errors = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, p.stderr[-3000:]
    line = errors[0]
    for fragment in (f"output_dir {run} holds a simple_cnn run, 2 of 2 epochs done (finished)",
                     "last.ckpt, best.ckpt, log.jsonl, summary.json", "--resume", "--overwrite", "output_dir=DIR"):
        assert fragment in line, line
    assert _snapshot(run) == before  # config.yaml too: refused before it is rewritten
    assert "train resnet18_cifar" not in p.stdout  # before any work


def test_overwrite_starts_again_and_says_what_it_removed(finished, tmp_path):
    run = _copy(finished, tmp_path)
    (run / "notes.txt").write_text("mine")
    p = _train("-c", finished["cfg"], "--set", f"output_dir={run}", "--set", "epoch_size=1", "--overwrite")
    assert p.returncode == 0, p.stderr[-3000:]
    said = [l for l in p.stdout.splitlines() if l.startswith("--overwrite:")]
    assert said == [f"--overwrite: removed a simple_cnn run, 2 of 2 epochs done (finished) from {run}: "
                    f"last.ckpt, best.ckpt, log.jsonl, summary.json; its config.yaml is rewritten"], p.stdout[-3000:]
    assert [r["epoch"] for r in _log(run)] == [1]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 1
    assert (run / "notes.txt").read_text() == "mine"  # not a run file: left alone


def test_resume_still_continues_and_contradicts_overwrite(finished, tmp_path):
    run = _copy(finished, tmp_path)
    before = _snapshot(run)
    args = ("-c", finished["cfg"], "--set", f"output_dir={run}")
    p = _train(*args, "--resume", "--overwrite")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1].startswith("error: --resume continues the run in"), p.stderr[-3000:]
    assert _snapshot(run) == before
    p = _train(*args, "--resume")  # a finished run: nothing to train, its summary
    assert p.returncode == 0 and json.loads(p.stdout[p.stdout.index("{"):])["epochs"] == 2, p.stderr[-3000:]
    assert _snapshot(run) == {**before, "config.yaml": (run / "config.yaml").read_bytes()}
    p = _train(*args, "--set", "epoch_size=3", "--resume")  # training longer continues it
    assert p.returncode == 0 and "resumed from" in p.stdout, p.stderr[-3000:]
    assert [r["epoch"] for r in _log(run)] == [1, 2, 3]


def test_a_folder_without_a_run_is_no_obstacle(packed, tmp_path):
    """Only a config.yaml (a run that stopped before its first epoch) and a file of the user's: it runs."""
    cfg = simple_cnn_config(tmp_path, packed, "run", epoch_size=1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: resnet50\n")
    (run / "README").write_text("mine")
    p = _train("-c", cfg)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "--overwrite" not in p.stdout + p.stderr
    assert [r["epoch"] for r in _log(run)] == [1] and (run / "README").read_text() == "mine"


# --- run_dir.py in process: the verdict, the description, the ranks' agreement ------------------------


def _fake_run(d, model="resnet50", epochs=(1, 2, 3), total=8, summary=False):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(f"model: {model}\nepoch_size: {total}\n")
    (d / "log.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in epochs) + "{torn\n")
    if summary:
        (d / "summary.json").write_text(json.dumps({"model": model, "epochs": total}))
    return d


def test_which_folders_hold_a_run(tmp_path):
    assert check_output_dir(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty") is None
    only_config = tmp_path / "died"
    only_config.mkdir()
    (only_config / "config.yaml").write_text("model: resnet50\n")
    (only_config / "last.partial.ckpt").write_text("")  # a save cut short: not a checkpoint
    assert run_files(only_config) == [] and check_output_dir(only_config) is None
    d = tmp_path / "run"
    d.mkdir()
    for name in ("epoch_10.ckpt", "summary.json", "epoch_2.ckpt", "log.jsonl", "best.ckpt", "last.ckpt", "x.ckpt"):
        (d / name).write_text("")
    assert run_files(d) == ["last.ckpt", "best.ckpt", "epoch_2.ckpt", "epoch_10.ckpt", "log.jsonl", "summary.json"]


def test_describe_falls_back_to_the_log_and_config(tmp_path):
    assert describe_run(_fake_run(tmp_path / "a"), ["log.jsonl"]) == "a resnet50 run, 3 of 8 epochs done (unfinished)"
    d = _fake_run(tmp_path / "b", epochs=(1, 2), total=2, summary=True)
    assert describe_run(d, ["log.jsonl", "summary.json"]) == "a resnet50 run, 2 of 2 epochs done (finished)"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "last.ckpt").write_text("not a checkpoint")
    assert describe_run(tmp_path / "c", ["last.ckpt"]) == "a run of an unknown model, epochs done unknown"


def test_overwrite_in_process_removes_only_run_files(tmp_path, capsys):
    d = _fake_run(tmp_path / "run", summary=True)
    (d / "eval.json").write_text("{}")
    with pytest.raises(OutputDirInUse, match="holds a resnet50 run, 3 of 8 epochs done"):
        check_output_dir(d)
    assert check_output_dir(d, resume=True) is None  # resume: checked when its checkpoint loads
    assert check_output_dir(d, overwrite=True) == ["log.jsonl", "summary.json"]
    assert sorted(p.name for p in d.iterdir()) == ["config.yaml", "eval.json"]
    assert capsys.readouterr().out == (f"--overwrite: removed a resnet50 run, 3 of 8 epochs done (unfinished) "
                                       f"from {d}: log.jsonl, summary.json; its config.yaml is rewritten\n")
    assert check_output_dir(d) is None  # nothing left to refuse


class FakeCollective:
    """all_reduce_sum across threads standing in for ranks: each rank's vector, summed once all arrived."""

    def __init__(self, n):
        self.barrier, self.parts, self.calls = threading.Barrier(n, timeout=60), [None] * n, 0

    def __call__(self, values, world):
        self.parts[world.rank] = np.asarray(values, np.float32)
        self.barrier.wait()
        total = np.sum(self.parts, axis=0).astype(np.float64)
        self.barrier.wait()
        self.calls += world.rank == 0
        return total


def _ranks(folders, **kwargs):
    """check_output_dir on ranks 0..n-1 at once, each looking at its own folder (a node-local output_dir);
    every rank's result or exception."""
    reduce, results = FakeCollective(len(folders)), [None] * len(folders)

    def rank(r):
        try:
            results[r] = check_output_dir(folders[r], world=World(r, len(folders)), reduce=reduce, **kwargs)
        except OutputDirInUse as e:
            results[r] = e
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(folders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results, reduce.calls


def test_every_rank_follows_rank_0(tmp_path):
    run, empty = _fake_run(tmp_path / "node0", summary=True), tmp_path / "node1"
    empty.mkdir()
    # rank 0 finds a run, rank 1 (another node's folder) nothing: both refuse, with rank 0's line
    results, calls = _ranks([run, empty, empty])
    assert all(isinstance(r, OutputDirInUse) for r in results) and calls == 1
    assert len({str(r) for r in results}) == 1 and str(results[0]).startswith(f"output_dir {run} holds a resnet50")
    # rank 0 finds nothing: every rank goes on, whatever the others see
    results, _ = _ranks([empty, run])
    assert results == [None, None]
    # --overwrite: no verdict to pass, only rank 0 removes files
    other = _fake_run(tmp_path / "node1b", summary=True)
    results, calls = _ranks([run, other], overwrite=True)
    assert results == [["log.jsonl", "summary.json"], None] and calls == 0
    assert run_files(run) == [] and run_files(other) == ["log.jsonl", "summary.json"]


def test_a_long_refusal_reaches_every_rank_whole(tmp_path):
    run = _fake_run(tmp_path / ("é" * 40) / ("x" * 200), model="m" * 300)
    results, _ = _ranks([run, run])
    assert str(results[0]) == str(results[1]) and "m" * 300 in str(results[1])


def test_the_continue_command_after_an_interruption_drops_overwrite():
    from ms_gpt4image.__main__ import _without_resume
    assert _without_resume(["train", "-c", "x.yaml", "--overwrite", "--set", "a=1"]) == \
        ["train", "-c", "x.yaml", "--set", "a=1"]


def test_two_msrun_workers_both_refuse_with_rank_0s_line(finished, tmp_path):
    """Data parallel for real (2 CPU workers, msrun): each worker ends with the same one line and exit 2;
    the run's files are unchanged."""
    from test_distributed import MSRUN, free_port
    import os
    run = _copy(finished, tmp_path)
    before = _snapshot(run)
    log_dir = tmp_path / "msrun_logs"
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=str(ROOT), PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}")
    proc = subprocess.run([MSRUN, "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
                           "--join=True", f"--log_dir={log_dir}", ROOT / "scripts" / "launch.py", "train", "-c",
                           finished["cfg"], "--set", f"output_dir={run}", "--set", "model=resnet18_cifar"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    logs = {p.name: p.read_text() for p in sorted(log_dir.glob("worker_*.log"))}
    assert proc.returncode != 0 and len(logs) == 2, f"{proc.stdout[-2000:]}\n{logs}"
    lines = {name: [l for l in text.splitlines() if l.startswith("error:")] for name, text in logs.items()}
    assert all(len(v) == 1 for v in lines.values()) and len({v[0] for v in lines.values()}) == 1, logs
    assert f"output_dir {run} holds a simple_cnn run, 2 of 2 epochs done (finished)" in lines["worker_1.log"][0]
    assert all("Traceback" not in text for text in logs.values()), logs
    assert _snapshot(run) == before
