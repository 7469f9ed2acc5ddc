"""scripts/reproduce.sh --dry-run-tiny: the whole chain of a paper table (describe with BLIP-2 in two shards
-> merge -> embed with CLIP -> pack -> verify -> baseline and GPT4Image for 2 seeds -> evaluate -> report ->
table beside the paper's) on a tiny CIFAR-10-format set with the tiny random BLIP-2 and CLIP, offline, on the
CPU; a second run resumes (every stage skipped, same table); bad arguments exit 2 with the usage line."""
import json
import pickle
import subprocess
import sys

import numpy as np

from conftest import CLI_ENV, ROOT, run_cli
from ms_gpt4image.stats import fmt_difference

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root, per_batch: int = 8, n_test: int = 20):
    """The official python layout: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}, pickles
    with bytes keys, images as uint8 rows of 3072 (R, G, B planes of 32x32)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def images(labels):
        x = rng.integers(0, 60, size=(len(labels), 3, 32, 32))
        for k, y in enumerate(labels):  # a bright bar whose row and colour depend on the class
            x[k, y % 3, 2 + 3 * y:5 + 3 * y, 4:28] = 220
        return x.astype(np.uint8).reshape(len(labels), 3072)

    def dump(name, obj):
        with open(d / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    for b in range(1, 6):
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        dump(f"data_batch_{b}", {b"batch_label": f"training batch {b} of 5".encode(), b"labels": labels,
                                 b"data": images(labels), b"filenames": [b"img_%d_%d.png" % (b, i) for i in range(per_batch)]})
    labels = [i % 10 for i in range(n_test)]
    dump("test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": images(labels),
                        b"filenames": [b"test_%d.png" % i for i in range(n_test)]})
    dump("batches.meta", {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": per_batch,
                          b"num_vis": 3072})
    return root


def reproduce(*args, timeout=600):
    """The script as a user runs it; PY = this interpreter (torch and mindspore each in their own processes)."""
    return subprocess.run(["bash", str(ROOT / "scripts" / "reproduce.sh"), *map(str, args)], cwd=ROOT,
                          env=dict(CLI_ENV, PY=sys.executable), capture_output=True, text=True, timeout=timeout)


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}"
    return proc


def test_dry_run_tiny_whole_chain_then_resume(tmp_path):
    cifar = write_cifar10(tmp_path / "cifar")
    run_cli(ROOT / "tests" / "make_tiny_vlms.py", "blip2", tmp_path / "blip2")
    run_cli(ROOT / "tests" / "make_tiny_clip.py", tmp_path / "clip")
    work = tmp_path / "work"
    # two seeds (the script's default for CIFAR is 3): the seed loop and the paired report over the seeds
    # are the same code for 2 as for 3; the two trainings and evaluations fewer save 19 s of the chain's 72
    args = ("cifar10", "--dry-run-tiny", "--cifar-root", cifar, "--blip2", tmp_path / "blip2",
            "--clip", tmp_path / "clip", "--work", work, "--seeds", 2)
    first = _ok(reproduce(*args))
    d = work / "cifar10"

    # describe ran as two shards (the GPU-box path, here on the CPU), merged into one set of all 40 images
    assert sorted(p.name for p in (d / "describe").glob("part_*.jsonl")) == ["part_0_of_2.jsonl", "part_1_of_2.jsonl"]
    rows = [json.loads(l) for l in (d / "descriptions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(40))
    manifest = json.loads((d / "data" / "manifest.json").read_text())
    assert manifest["describer"]["backend"] == "blip2"
    assert manifest["describer"]["prompt"] == "Write a one-sentence short description about this image."
    assert manifest["embedding"]["model"] == str(tmp_path / "clip") and manifest["embedding"]["dim"] == 24
    assert manifest["splits"]["train"]["count"] == 40 and manifest["splits"]["eval"]["count"] == 20

    # both seeds of both arms, in demo.sh's layout, and the per-model report over them
    run = d / "train" / "resnet18"
    for seed in (42, 1):
        for arm in ("baseline", "gpt4image"):
            assert json.loads((run / f"seed_{seed}" / arm / "eval.json").read_text())["count"] == 20
    report = json.loads((run / "report.json").read_text())
    assert sorted(report["per_seed"], key=int) == ["1", "42"]
    base, ours = report["arms"]["baseline"]["top1"], report["arms"]["gpt4image"]["top1"]
    assert base["n"] == ours["n"] == report["top1_difference"]["n"] == 2
    assert report["per_seed"]["42"]["gpt4image"]["lambda"] == 0.3 and report["per_seed"]["42"]["baseline"]["lambda"] == 0

    # the table: ours (mean +- std, paired difference with its interval and verdict) beside the paper's Table 2 row
    table = (d / "table.md").read_text()
    row = next(l for l in table.splitlines() if l.startswith("| ResNet-18 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{base['mean']:.2f} +- {base['std']:.2f}"
    assert cells[2] == f"{ours['mean']:.2f} +- {ours['std']:.2f}"
    diff = report["top1_difference"]
    assert cells[3] == fmt_difference(diff) and "95% CI" in cells[3]
    assert cells[4] == diff["verdict"]
    assert cells[5:] == ["95.5", "95.7", "+0.2"]
    assert "Dry run" in table and table in first.stdout  # printed as well
    assert not list(d.glob(".table.md*"))  # written under a temporary name, then renamed

    # a second run resumes: every stage is skipped (no captioning, packing or training again), same table
    out = _ok(reproduce(*args)).stdout
    assert "describe: " in out and "exists, skipped" in out
    assert "embed: " in out and "pack: " in out
    assert out.count("eval.json exists, skipped") == 4
    assert "=== train" not in out and "=== describe" not in out and "=== pack" not in out
    assert (d / "table.md").read_text() == table


def test_bad_arguments_exit_2_with_usage(tmp_path):
    p = reproduce("mnist", "--work", tmp_path)
    assert p.returncode == 2 and "unknown dataset 'mnist'" in p.stderr and "usage: scripts/reproduce.sh" in p.stderr
    p = reproduce("cifar10", "--stage", "deploy", "--work", tmp_path)
    assert p.returncode == 2 and "unknown stage" in p.stderr and "usage:" in p.stderr
    p = reproduce("cifar10", "--dry-run-tiny", "--work", tmp_path)  # the tiny models' folders are required
    assert p.returncode == 2 and "--blip2" in p.stderr
    assert not list(tmp_path.iterdir())  # nothing started
