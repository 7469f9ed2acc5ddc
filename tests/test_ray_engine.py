"""`describe --engine ray` and `embed --engine ray` (export/ray_engine.py) on one local Ray cluster that this
module starts (2 CPUs, loopback, its own temp folder) and stops: the same bytes as one process (template,
tiny random BLIP-2 through scripts/reproduce.sh --engine ray), embeddings equal to 1e-6, a SIGKILLed
driver resumed without redoing finished blocks, a SIGKILLed actor replaced, bad images, the description
cache, Ctrl-C, a slow actor that does not hold the others back (generous bound; scripts/bench_offline.py
--ray-only measures it), and the one-line error without Ray."""
import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLI_ENV, ROOT, run_cli
from export.ray_local import free_port, kill_cluster, local_cluster
from test_reproduce import reproduce, write_cifar10

DELAY = "GPT4IMAGE_RAY_TEST_DELAY"  # export/ray_engine.py's test-only delay


@pytest.fixture(scope="module")
def address():
    """One local Ray head for the module (export/ray_local.py: loopback address, free ports, own temp
    folder), killed with all its processes when the module ends, whatever happened."""
    with local_cluster(num_cpus=2, env=CLI_ENV, cwd=ROOT) as addr:
        yield addr


def describe(*args, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "export", "describe", *map(str, args)], cwd=ROOT,
                          env=env or CLI_ENV, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc


def stats(proc):
    return json.loads(proc.stdout)


def last_line(text):
    return [line for line in text.splitlines() if line.strip()][-1]


def start(args, log, env):
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "export", "describe", *map(str, args)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(cond, proc, log, timeout=120):
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"finished first:\n{Path(log).read_text()[-3000:]}"
        assert time.monotonic() < deadline, Path(log).read_text()[-3000:]
        time.sleep(0.02)


def parts_of(out):
    return sorted(p.name for p in Path(f"{out}.parts").glob("*-*.json"))


def stopped_mid_run(args, log, stop, parts=2):
    """Runs describe ARGS (every actor sleeping 0.4 s a block), calls stop(driver) once `parts` parts are
    written; returns the exit code and the seconds from the stop to the exit."""
    out = args[args.index("--out") + 1]
    driver = start(args, log, dict(CLI_ENV, **{DELAY: "0.4"}))
    try:
        wait_for(lambda: len(parts_of(out)) >= parts, driver, log)
        stop(driver)
        t0 = time.monotonic()
        return driver.wait(timeout=60), time.monotonic() - t0
    finally:
        if driver.poll() is None:
            driver.kill()


def resume_printed(line, replace=()):
    """Runs the command a one-line message ends with (`replace`: (flag, new value) pairs); its stats."""
    cmd = shlex.split(line[line.index("python -m export "):])
    for flag, value in replace:
        cmd[cmd.index(flag) + 1] = value
    return stats(describe(*cmd[4:]))


@pytest.fixture(scope="module")
def reference(idx_root, tmp_path_factory):
    """One process, template backend, the first 96 images: the bytes every Ray run must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "d.jsonl"
    describe("--root", idx_root, "--batch-size", 4, "--cache", "none", "--out", out)
    return out


SRC = ("--batch-size", 4, "--block-size", 8)  # 96 images: 12 blocks of 2 batches


def test_without_ray_the_flag_says_what_to_install(idx_root, tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from export.__main__ import main; "  # import ray -> ImportError
            "sys.exit(main(sys.argv[1:]))")
    for cmd in ("describe", "embed"):
        args = (["describe", "--root", idx_root] if cmd == "describe" else ["embed", "--descriptions", tmp_path / "d"])
        p = run_cli("-c", code, *args, "--engine", "ray", "--out", tmp_path / "x", check=False)
        assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
        assert p.stderr.startswith("error: --engine ray needs Ray Data: pip install 'ms_gpt4image[ray]'"), p.stderr
    assert not list(tmp_path.iterdir())  # nothing written
    # the default engine never imports Ray
    run_cli("-c", code, "describe", "--root", idx_root, "--limit", 3, "--out", tmp_path / "d.jsonl")


def test_no_cluster_at_the_address_is_one_line_within_the_limit(idx_root, tmp_path):
    """A port where nothing listens, and one that accepts connections but is no Ray head (as the dashboard's
    would): each ends within --connect-timeout with one line naming the address, exit 2, no part written.
    (Ray alone waits for minutes.)"""
    (tmp_path / "d.jsonl").write_text(json.dumps({"index": 0, "label": 0, "description": "a shoe"}) + "\n")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        cases = [("describe", f"127.0.0.1:{free_port()}"), ("describe", f"127.0.0.1:{other.getsockname()[1]}"),
                 ("embed", f"127.0.0.1:{free_port()}")]
        for k, (cmd, addr) in enumerate(cases):
            out = tmp_path / str(k) / "out"
            args = ["--root", idx_root] if cmd == "describe" else ["--descriptions", tmp_path / "d.jsonl"]
            t0 = time.monotonic()
            p = run_cli("-m", "export", cmd, *args, "--engine", "ray", "--address", addr, "--connect-timeout", 1,
                        "--out", out, check=False)
            elapsed = time.monotonic() - t0
            line = last_line(p.stderr)
            assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
            assert line.startswith(f"error: could not join a Ray cluster at {addr} within 1 s: check that its head "
                                   f"is running (`ray start --head --port={addr.split(':')[1]}` on 127.0.0.1"), line
            assert cmd == "embed" or p.stderr.count("\n") == 1, p.stderr  # embed: the encoder's loading bar too
            assert elapsed < 20, (cmd, addr, elapsed)  # the process's start and imports included
            assert not Path(f"{out}.parts").exists() and not (tmp_path / str(k) / "describe_cache.sqlite").exists()


def test_template_same_bytes_and_meta_as_one_process_and_the_cache_is_shared(address, idx_root, reference, tmp_path):
    out = tmp_path / "ray" / "d.jsonl"
    s = stats(describe("--root", idx_root, *SRC, "--engine", "ray", "--address", address, "--out", out))
    assert out.read_bytes() == reference.read_bytes()
    assert Path(f"{out}.meta.json").read_text() == Path(f"{reference}.meta.json").read_text()
    assert (s["written"], s["blocks"], s["blocks_described"], s["workers"], s["cached"]) == (96, 12, 12, 2, 0)
    assert not Path(f"{out}.parts").exists()
    # the driver stored every description in the cache: another output is served from it, by either engine
    cache = tmp_path / "ray" / "describe_cache.sqlite"
    assert sqlite3.connect(cache).execute("SELECT COUNT(*) FROM descriptions").fetchone()[0] == 96
    again = stats(describe("--root", idx_root, *SRC, "--engine", "ray", "--address", address, "--cache", cache,
                           "--out", tmp_path / "again.jsonl"))
    single = stats(describe("--root", idx_root, "--cache", cache, "--out", tmp_path / "single.jsonl"))
    assert again["cached"] == single["cached"] == 96
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "single.jsonl").read_bytes() == reference.read_bytes()
    # a finished output is not described again, and Ray is not even started
    s = stats(describe("--root", idx_root, *SRC, "--engine", "ray", "--address", "127.0.0.1:1", "--out", out))
    assert (s["written"], s["skipped"], s["blocks_described"]) == (0, 96, 0)


def test_killed_driver_resumes_without_redoing_finished_blocks(address, idx_root, reference, tmp_path):
    out = tmp_path / "d.jsonl"
    args = ["--root", idx_root, *SRC, "--engine", "ray", "--address", address, "--out", out]
    stopped_mid_run(args, tmp_path / "log", lambda driver: driver.kill(), parts=3)  # SIGKILL: no cleanup at all
    kept = parts_of(out)
    assert 3 <= len(kept) < 12 and not out.exists()
    s = stats(describe(*args))
    # only the missing blocks went to the workers: rows of the kept ones were not described again
    assert (s["blocks_kept"], s["blocks_described"], s["written"]) == (len(kept), 12 - len(kept), 96 - 8 * len(kept))
    assert out.read_bytes() == reference.read_bytes()


def test_killed_actor_is_replaced_and_its_block_retried(address, idx_root, reference, tmp_path):
    out = tmp_path / "d.jsonl"
    actors = Path(f"{out}.ray_test_actors")
    driver = start(["--root", idx_root, *SRC, "--engine", "ray", "--address", address, "--out", out],
                   tmp_path / "log", dict(CLI_ENV, **{DELAY: "1.5:1"}))  # actor_0 sleeps 1.5 s before each block
    try:
        wait_for(lambda: (actors / "actor_0").exists() and len(parts_of(out)) >= 1, driver, tmp_path / "log")
        time.sleep(0.3)  # actor_0 is inside a block now (its sleep)
        os.kill(int((actors / "actor_0").read_text()), signal.SIGKILL)
        assert driver.wait(timeout=180) == 0, (tmp_path / "log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    assert (actors / "actor_2").exists()  # the replacement started (and claimed the next slot)
    assert out.read_bytes() == reference.read_bytes()


def test_ctrl_c_keeps_finished_blocks_and_the_printed_command_continues(address, idx_root, reference, tmp_path):
    out = tmp_path / "d.jsonl"
    code, _ = stopped_mid_run(["--root", idx_root, *SRC, "--engine", "ray", "--address", address, "--out", out],
                              tmp_path / "log", lambda driver: driver.send_signal(signal.SIGINT))
    err = (tmp_path / "log").read_text()
    line = last_line(err)
    kept = len(parts_of(out))
    assert code == 130 and "Traceback" not in err, err[-3000:]
    assert line.startswith(f"interrupted: {kept} of 12 blocks (8 images each) kept in {out}.parts (resumable); "
                           f"continue with: python -m export describe "), line
    assert resume_printed(line)["blocks_kept"] == kept and out.read_bytes() == reference.read_bytes()


def test_cluster_lost_mid_run_keeps_the_parts_and_the_printed_command_continues(address, idx_root, reference,
                                                                                 tmp_path):
    """Head and workers killed at once (a crashed host) while blocks run: within --connect-timeout of the last
    answer, one line naming the address, the parts kept and the command that continues; exit 2."""
    out = tmp_path / "d.jsonl"
    with local_cluster(num_cpus=2, env=CLI_ENV, cwd=ROOT) as lost:
        # Ray alone ends the driver 60 s after the loss, exit 1, without a word on what was kept
        code, waited = stopped_mid_run(["--root", idx_root, *SRC, "--engine", "ray", "--address", lost,
                                        "--connect-timeout", 8, "--out", out], tmp_path / "log",
                                       lambda driver: kill_cluster(lost))
    err = (tmp_path / "log").read_text()
    line = last_line(err)
    kept = len(parts_of(out))
    assert code == 2 and "Traceback" not in err and waited < 8 + 6, (code, waited, err[-3000:])
    assert line.startswith(f"error: lost the Ray cluster at {lost}: its head has not answered for 8 s "), line
    assert f"; {kept} of 12 blocks (8 images each) kept in {out}.parts (resumable); continue with: " \
           f"python -m export describe " in line and 2 <= kept < 12, line
    s = resume_printed(line, [("--address", address)])  # the cluster back (here: the module's)
    assert s["blocks_kept"] == kept and out.read_bytes() == reference.read_bytes()


def test_bad_image_fails_like_one_process_and_skip_bad_lists_it(address, tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for k in range(6):
            Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(tmp_path / "img" / cls / f"{k}.png")
    (tmp_path / "img" / "dog" / "1.png").write_bytes(b"broken")
    src = ["--source", "imagefolder", "--root", tmp_path / "img", "--batch-size", 2]
    ray = ["--block-size", 4, "--engine", "ray", "--address", address]
    one = describe(*src, "--out", tmp_path / "one" / "d.jsonl", check=False)
    many = describe(*src, *ray, "--out", tmp_path / "ray" / "d.jsonl", check=False)
    assert one.returncode == many.returncode == 2 and "Traceback" not in many.stderr
    assert last_line(many.stderr) == last_line(one.stderr)
    assert "dog/1.png" in last_line(one.stderr) and "--skip-bad" in last_line(one.stderr)
    for engine, extra in (("one", []), ("ray", ray)):
        describe(*src, *extra, "--skip-bad", "--out", tmp_path / engine / "s.jsonl")
    for name in ("s.jsonl", "s.jsonl.skipped.jsonl", "s.jsonl.meta.json"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    (skipped,) = [json.loads(l) for l in (tmp_path / "ray" / "s.jsonl.skipped.jsonl").read_text().splitlines()]
    assert skipped["index"] == 7 and "dog/1.png" in skipped["error"]


def test_slow_actor_does_not_hold_the_others_back(address, idx_root, reference, tmp_path):
    """24 blocks over 2 workers, one of which sleeps 1.5 s before each block: split statically, that
    worker's 12 blocks would add 18 s; taking blocks one at a time, it holds back about one block."""
    args = ["--root", idx_root, "--batch-size", 4, "--block-size", 4, "--engine", "ray", "--address", address]
    times = {}
    for name, env in (("even", CLI_ENV), ("slow", dict(CLI_ENV, **{DELAY: "1.5:1"}))):
        t0 = time.perf_counter()
        describe(*args, "--cache", "none", "--out", tmp_path / name / "d.jsonl", env=env)
        times[name] = time.perf_counter() - t0
        assert (tmp_path / name / "d.jsonl").read_bytes() == reference.read_bytes()
    assert times["slow"] - times["even"] < 9, times  # generous: a static split costs 18 s more


@pytest.fixture(scope="module")
def described(idx_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb") / "d.jsonl"
    describe("--root", idx_root, "--cache", "none", "--out", out)
    return out


def test_embed_equal_to_one_process(address, described, tmp_path):
    args = ["-m", "export", "embed", "--descriptions", described, "--chunk-size", 24, "--batch-size", 8]
    run_cli(*args, "--out", tmp_path / "one")
    run_cli(*args, "--engine", "ray", "--address", address, "--out", tmp_path / "ray")
    np.testing.assert_allclose(np.load(tmp_path / "ray.npy"), np.load(tmp_path / "one.npy"), atol=1e-6, rtol=0)
    assert np.array_equal(np.load(tmp_path / "ray.index.npy"), np.load(tmp_path / "one.index.npy"))
    assert (tmp_path / "ray.meta.json").read_text() == (tmp_path / "one.meta.json").read_text()
    assert not (tmp_path / "ray.parts").exists()


def test_reproduce_describes_on_ray_with_the_same_bytes_as_one_process_tiny_blip2(address, tmp_path):
    """scripts/reproduce.sh --engine ray, describe stage of the dry run (tiny random BLIP-2, 40 CIFAR-format
    images): the same descriptions.jsonl and meta as `describe` in one process with the same settings."""
    cifar = write_cifar10(tmp_path / "cifar")
    run_cli(ROOT / "tests" / "make_tiny_vlms.py", "blip2", tmp_path / "blip2")
    p = reproduce("cifar10", "--dry-run-tiny", "--cifar-root", cifar, "--blip2", tmp_path / "blip2", "--clip",
                  tmp_path / "none", "--work", tmp_path / "work", "--stage", "describe", "--engine", "ray",
                  "--address", address)
    assert p.returncode == 0, p.stderr[-4000:]
    got = tmp_path / "work" / "cifar10" / "descriptions.jsonl"
    ref = tmp_path / "one.jsonl"
    describe("--source", "cifar10", "--root", cifar, "--backend", "blip2", "--model", tmp_path / "blip2",
             "--prompt", "short", "--batch-size", 4, "--device", "cpu", "--max-new-tokens", 8, "--cache", "none",
             "--out", ref)
    assert len(ref.read_text().splitlines()) == 40
    assert got.read_bytes() == ref.read_bytes()
    assert Path(f"{got}.meta.json").read_text() == Path(f"{ref}.meta.json").read_text()
    assert not (tmp_path / "work" / "cifar10" / "describe").exists()  # one Ray run: no shard parts to merge


def test_auto_without_a_cluster_is_one_line(monkeypatch):
    """`--address auto` where no cluster runs on this host: Ray's ConnectionError becomes the CLI's one line
    (connect is replaced: a real `auto` would find this module's test cluster)."""
    from export import ray_engine

    def no_cluster(address):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.\nmore")
    monkeypatch.setattr(ray_engine, "connect", no_cluster)
    with pytest.raises(ValueError, match=r"^--address auto: Could not find any running Ray instance\. .*ray start --head"):
        with ray_engine.cluster(ray_engine.RayOptions(address="auto")):
            pass
