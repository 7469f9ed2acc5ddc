"""Seed statistics and the multi-seed report (ms_gpt4image.stats / report)."""
import json
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
