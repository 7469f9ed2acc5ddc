"""Seed statistics and the multi-seed report (ms_gpt4image.stats / report)."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from scipy import stats as st

from conftest import ROOT, run_cli
from ms_gpt4image.stats import paired_difference


def test_paired_difference_matches_a_paired_t_interval():
    base, ours = [77.85, 77.50, 78.20], [78.10, 77.95, 78.00]  # the three quick-demo seeds
    d = paired_difference(base, ours)
    diff = np.subtract(ours, base)
    assert d["mean"] == pytest.approx(0.1667, abs=1e-4) and d["std"] == pytest.approx(0.3329, abs=1e-4)
    lo, hi = st.t.interval(0.95, 2, loc=diff.mean(), scale=st.sem(diff))
    assert d["ci"] == pytest.approx([lo, hi]) and "within seed noise" in d["verdict"]
    assert "ahead beyond seed noise" in paired_difference([70, 71, 72], [71, 72.1, 72.9])["verdict"]
    assert "behind beyond seed noise" in paired_difference([71, 72.1, 72.9], [70, 71, 72])["verdict"]
    one = paired_difference([77.3], [76.7])
    assert one["ci"] is None and "cannot be told from seed noise" in one["verdict"]
    with pytest.raises(ValueError, match="pair them by seed"):
        paired_difference([1, 2], [1])


def _arm(path, top1, lam):
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"lambda": lam, "best_top1": top1, "wall_time_s": 50.0,
                                                   "train_images_per_s": 400.0, "epochs": 2, "train_images": 96}))
    (path / "log.jsonl").write_text("".join(json.dumps({"epoch": e, "top1": top1 - 10 * (2 - e)}) + "\n" for e in (1, 2)))
    (path / "eval.json").write_text(json.dumps({"top1": top1, "top5": 99.0, "count": 40}))


def test_report_gives_every_seed_the_spread_and_the_verdict(tmp_path):
    figures = {42: (77.85, 78.10), 1: (77.50, 77.95), 2: (78.20, 78.00)}
    for seed, (b, g) in figures.items():
        _arm(tmp_path / f"seed_{seed}" / "baseline", b, 0.0)
        _arm(tmp_path / f"seed_{seed}" / "gpt4image", g, 0.3)
    out = run_cli("-m", "ms_gpt4image.report", tmp_path, "--seeds", "42,1,2").stdout
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["seeds"] == [42, 1, 2] and r["arms"]["baseline"]["top1"]["mean"] == pytest.approx(77.85)
    assert "+0.17 +- 0.33, 95% CI -0.66 .. +0.99" in out and "within seed noise" in out
    assert all(f"| {s} | {b:.2f} | {g:.2f} |" in out for s, (b, g) in figures.items())
    assert (tmp_path / "accuracy.png").stat().st_size > 0 and not list(tmp_path.glob(".*partial*"))
    # a seed whose GPT4Image arm did not finish: named, exit 2, nothing rewritten
    (tmp_path / "seed_3" / "baseline").mkdir(parents=True)
    p = run_cli("-m", "ms_gpt4image.report", tmp_path, check=False)
    assert p.returncode == 2 and "seed_3/baseline/summary.json: missing" in p.stderr


def test_demo_refuses_a_bad_seed_count():
    for bad in (["--seeds", "0"], ["--seeds"], ["--seeds", "x"], ["--bogus"]):
        p = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), *bad], capture_output=True, text=True)
        assert p.returncode == 2 and "usage: scripts/demo.sh" in p.stderr, bad


def _json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _replace_line(path, n, text):
    lines = path.read_text().splitlines()
    lines[n - 1] = text
    path.write_text("\n".join(lines) + "\n")


EVAL = "seed_1/baseline/eval.json"
LOG = "seed_1/gpt4image/log.jsonl"
# case: (file named, damage done to it (run dir, that file), what the line says after the file)
DAMAGED = {
    "eval not JSON": (EVAL, lambda d, f: f.write_text('{"top1": 77.1,\n'), "not valid JSON (Expecting"),
    "summary not JSON": ("seed_1/gpt4image/summary.json", lambda d, f: f.write_text(""), "not valid JSON"),
    "manifest not JSON": ("data/manifest.json", lambda d, f: (f.parent.mkdir(), f.write_text("{")),
                          "not valid JSON"),
    "export not JSON": ("deploy/gpt4image.export.json", lambda d, f: (f.parent.mkdir(), f.write_text("mindir")),
                        "not valid JSON"),
    "log torn line": (LOG + ":2", lambda d, f: _replace_line(d / LOG, 2, '{"epoch": 2, "to'), "not valid JSON"),
    "log line not an object": (LOG + ":1", lambda d, f: _replace_line(d / LOG, 1, "[1, 2]"),
                               "expected a JSON object, got list"),
    "log top1 wrong type": (LOG + ":1", lambda d, f: _replace_line(d / LOG, 1, '{"epoch": 1, "top1": "high"}'),
                            "'top1' is \"high\", not a number"),
    "log without eval": (LOG, lambda d, f: f.write_text('{"epoch": 1, "loss": 2.0}\n'), "no evaluated epoch"),
    "eval a list": (EVAL, lambda d, f: f.write_text("[77.1, 99.0]"), "expected a JSON object, got list"),
    "eval a folder": (EVAL, lambda d, f: (f.unlink(), f.mkdir()), "cannot read (Is a directory)"),
    "summary lacks a key": ("seed_1/baseline/summary.json",
                            lambda d, f: _json(f, {"lambda": 0.0, "best_top1": 1.0, "epochs": 2}),
                            "no 'wall_time_s'"),
    "top1 a string": (EVAL, lambda d, f: _json(f, {"top1": "77.1", "top5": 99.0, "count": 40}),
                      "'top1' is \"77.1\", not a number"),
    "top1 null": (EVAL, lambda d, f: _json(f, {"top1": None, "top5": 99.0, "count": 40}),
                  "'top1' is null, not a number"),
    "manifest lacks a nested key": ("data/manifest.json", lambda d, f: _json(
        f, {"dataset": "x", "describer": {"model": None}, "embedding": {"model": "m", "dim": 8}}),
        "no 'describer.backend'"),
    "arm folder missing": ("seed_1/gpt4image", lambda d, f: shutil.rmtree(f), "missing (did that arm train?)"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_every_damaged_input_is_one_line_naming_the_file(tmp_path, capsys, case):
    from ms_gpt4image.report import main
    for arm, top1 in (("baseline", 77.0), ("gpt4image", 78.0)):
        _arm(tmp_path / "seed_1" / arm, top1, 0.0)
    named, damage, says = DAMAGED[case]
    damage(tmp_path, tmp_path / named.split(":")[0])
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / named}: ") and says in err and "\n" not in err, err
    assert not [p for p in tmp_path.iterdir() if "report" in p.name or "accuracy" in p.name]


def test_a_run_folder_that_is_not_one_is_named(tmp_path, capsys):
    from ms_gpt4image.report import main
    (tmp_path / "file").write_text("")
    for run_dir, says in ((tmp_path / "nope", "no such folder"), (tmp_path / "file", "not a folder")):
        assert main([str(run_dir)]) == 2
        assert capsys.readouterr().err.strip().startswith(f"error: {run_dir}: {says}")


@pytest.mark.parametrize("how", ["output is a folder", "read-only run folder"])
def test_a_report_that_cannot_be_written_is_named_and_leaves_nothing(tmp_path, capsys, how):
    from ms_gpt4image.report import main
    for arm, top1 in (("baseline", 77.0), ("gpt4image", 78.0)):
        _arm(tmp_path / "seed_1" / arm, top1, 0.0)
    if how == "output is a folder":
        (tmp_path / "report.md").mkdir()
        named, says = tmp_path / "report.md", "cannot write (Is a directory)"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder; the folder case covers the error path")
        tmp_path.chmod(0o555)
        named, says = tmp_path / "report.json", "cannot write (Permission denied)"
    try:
        assert main([str(tmp_path)]) == 2
    finally:
        tmp_path.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert err == f"error: {named}: {says}", err
    assert not list(tmp_path.glob("*partial*"))


def test_a_run_resumed_after_its_last_epoch_is_still_reported(tmp_path, capsys):
    """train --resume on a finished run trains nothing and writes train_images_per_s: null."""
    from ms_gpt4image.report import main
    for arm, top1 in (("baseline", 77.0), ("gpt4image", 78.0)):
        _arm(tmp_path / "seed_1" / arm, top1, 0.0)
    summary = tmp_path / "seed_1" / "gpt4image" / "summary.json"
    _json(summary, {**json.loads(summary.read_text()), "train_images_per_s": None})
    assert main([str(tmp_path)]) == 0
    assert "| 1 | 77.00 | 78.00 | +1.00 |" in capsys.readouterr().out
