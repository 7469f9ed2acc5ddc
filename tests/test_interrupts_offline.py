"""Ctrl-C (SIGINT) and SIGTERM in the long offline commands: describe, embed, pack, inspect.

Each test interrupts a real run mid-way and checks: exit 130, one last line 'interrupted: ...' saying
what was kept with the command that continues, no traceback, no half-written file; then runs the
printed command and compares its result with an uninterrupted run started beside it."""
import json
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import CLI_ENV, ROOT, run_cli, synthetic_images, write_idx


def _default_sigint():
    # a shell that starts pytest in the background ignores SIGINT, and children would inherit that
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args, log, env=CLI_ENV):
    """`python -m export ARGS` in the background, stderr to the file `log`."""
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "export", *map(str, args)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_default_sigint)


def finished(proc, log):
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]


def interrupt(args, ready, log, sig=signal.SIGINT, env=CLI_ENV) -> str:
    """Runs the command, sends `sig` once ready(stderr so far) is true, returns the last line it printed."""
    proc = start(args, log, env)
    try:
        deadline = time.monotonic() + 120
        while not ready(log.read_text()):
            assert proc.poll() is None, f"it finished before it could be interrupted:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.01)
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert code == 130 and last.startswith("interrupted: ") and "Traceback" not in err, err[-3000:]
    return last


def resume(line):
    """Runs the command line that the interruption printed."""
    cmd = shlex.split(line[line.index("python -m export "):])
    return run_cli(*cmd[1:], timeout=300)


def leftovers(d):
    """Temporary files under d, but for the uninterrupted reference run's (under d/ref, maybe still running)."""
    return [str(p) for p in d.rglob("*") if ("partial" in p.name or ".tmp" in p.name) and d / "ref" not in p.parents]


def idx_source(d, n):
    """An idx dataset of n training images (and 40 test images) under d; returns the training labels."""
    d.mkdir()
    sets = {"train": synthetic_images(n, 0), "t10k": synthetic_images(40, 1)}
    for prefix, (images, labels) in sets.items():
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return sets["train"][1]


def write_set(d, labels, dim, seed=0):
    """d/d.jsonl and embeddings d/emb.* for rows 0..n-1 (class clusters plus noise, unit norm)."""
    rng = np.random.default_rng(seed)
    words = ["shirt", "boot", "bag", "dress", "coat", "sneaker", "trouser"]
    (d / "d.jsonl").write_text("".join(
        json.dumps({"index": i, "label": int(y), "description": f"a {words[i % 7]} " + "very " * (i % 9) + f"dark {y}"})
        + "\n" for i, y in enumerate(labels)))
    emb = np.eye(dim)[np.asarray(labels) % dim] + 0.5 * rng.normal(size=(len(labels), dim))
    np.save(d / "emb.npy", (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32))
    np.save(d / "emb.index.npy", np.arange(len(labels), dtype=np.int64))
    (d / "emb.meta.json").write_text(json.dumps({"model": "clusters", "dim": dim, "count": len(labels)}))
    return d / "d.jsonl", d / "emb"


def test_describe_interrupted_keeps_whole_lines_and_continues_to_the_same_file(tmp_path):
    root = tmp_path / "src"
    idx_source(root, 2500)
    out, ref = tmp_path / "d.jsonl", tmp_path / "ref" / "d.jsonl"
    reference = start(["describe", "--root", root, "--out", ref, "--cache", "none"], tmp_path / "ref.log")
    line = interrupt(["describe", "--root", root, "--batch-size", 1, "--out", out],
                     lambda err: out.exists() and out.read_text().count("\n") >= 50, tmp_path / "stderr.log")
    text = out.read_text()
    kept = [json.loads(row) for row in text.splitlines()]  # every line whole
    assert text.endswith("\n") and 50 <= len(kept) < 2500
    assert re.fullmatch(rf"interrupted: {len(kept)} of 2500 descriptions kept in {re.escape(str(out))} \(resumable\); "
                        rf"continue with: python -m export describe .*", line), line
    assert not leftovers(tmp_path)
    p = resume(line)
    assert f"| {len(kept)}/2500 [" in p.stderr  # it went on from there
    finished(reference, tmp_path / "ref.log")
    assert out.read_bytes() == ref.read_bytes()


def test_embed_interrupted_keeps_finished_chunks_and_the_same_command_continues(tmp_path):
    desc = tmp_path / "d.jsonl"
    desc.write_text("".join(json.dumps({"index": i, "label": i % 10, "description": f"photo {i} of a thing {i % 7}"})
                            + "\n" for i in range(240)))
    env = dict(CLI_ENV, OMP_NUM_THREADS="1")  # the reference encodes beside it: one core each
    args = ["embed", "--descriptions", desc, "--chunk-size", 30, "--batch-size", 16]
    reference = start([*args, "--out", tmp_path / "ref" / "emb"], tmp_path / "ref.log", env)
    parts = tmp_path / "emb.parts"
    line = interrupt([*args, "--out", tmp_path / "emb"], lambda err: (parts / "chunk_000001.npy").exists(),
                     tmp_path / "stderr.log", env=env)
    chunks = len(list(parts.glob("chunk_*.npy")))
    assert line.startswith(f"interrupted: {chunks} of 8 chunks (30 descriptions each) kept in {parts}; "
                           f"the same command continues with the rest: python -m export embed "), line
    assert 2 <= chunks < 8 and not (tmp_path / "emb.npy").exists() and not leftovers(tmp_path)
    p = resume(line)
    assert f"| {30 * chunks}/240 [" in p.stderr and not parts.exists()
    finished(reference, tmp_path / "ref.log")
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), np.load(tmp_path / "ref" / "emb.npy"), atol=1e-6)
    assert np.array_equal(np.load(tmp_path / "emb.index.npy"), np.arange(240))


def test_pack_terminated_leaves_no_partial_folder_and_packs_again(tmp_path):
    labels = idx_source(tmp_path / "src", 15000)
    desc, emb = write_set(tmp_path, labels, 8)
    args = ["pack", "--root", tmp_path / "src", "--descriptions", desc, "--embeddings", emb]
    out = tmp_path / "data"
    reference = start([*args, "--out", tmp_path / "ref" / "data"], tmp_path / "ref.log")
    line = interrupt([*args, "--out", out], lambda err: "pack train" in err, tmp_path / "stderr.log",
                     sig=signal.SIGTERM)
    assert line.startswith(f"interrupted: nothing written under {out}; start again with: python -m export pack "), line
    assert not out.exists() and not leftovers(tmp_path)
    resume(line)  # without --overwrite: nothing is in the way
    finished(reference, tmp_path / "ref.log")
    got, want = (json.loads((d / "manifest.json").read_text()) for d in (out, tmp_path / "ref" / "data"))
    del got["created"], want["created"]
    assert got == want and got["splits"]["train"]["count"] == 15000  # same files, by their sha256


def test_inspect_interrupted_writes_nothing_and_runs_again(tmp_path):
    desc, emb = write_set(tmp_path, np.arange(12000) % 10, 16)
    args = ["inspect", "--descriptions", desc, "--embeddings", emb, "--tsne-per-class", 40]
    out = tmp_path / "rep"
    reference = start([*args, "--out", tmp_path / "ref"], tmp_path / "ref.log")
    line = interrupt([*args, "--out", out], lambda err: "inspect d: texts" in err, tmp_path / "stderr.log")
    assert line.startswith(f"interrupted: nothing written under {out}; start again with: "
                           f"python -m export inspect "), line
    assert not out.exists() and not leftovers(tmp_path)
    resume(line)
    finished(reference, tmp_path / "ref.log")
    got, want = (json.loads((d / "report.json").read_text()) for d in (out, tmp_path / "ref"))
    del got["files"], want["files"]
    assert got == want and sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())


def test_inspect_interrupted_while_writing_leaves_the_previous_report(tmp_path, monkeypatch):
    from export import inspect_set
    from test_inspect import HAND_NAMES, HAND_ROWS, hand_embeddings, write_set as write_hand_set
    desc, emb = write_hand_set(tmp_path, "hand", HAND_ROWS, hand_embeddings(), HAND_NAMES)
    out = tmp_path / "rep"
    inspect_set.run_inspect(desc, emb, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted_plot(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(inspect_set, "plot_lengths", interrupted_plot)  # after tsne.png, before report.md
    with pytest.raises(KeyboardInterrupt):
        inspect_set.run_inspect(desc, emb, out, seed=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
