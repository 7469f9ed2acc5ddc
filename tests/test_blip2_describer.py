"""The BLIP-2 backend through its real loading code, on a tiny random BLIP-2 built in the test."""
import json

from conftest import ROOT, run_cli


def test_blip2_backend_on_tiny_random_model(idx_root, tmp_path):
    run_cli(ROOT / "tests" / "make_tiny_blip2.py", tmp_path / "blip2")
    out = tmp_path / "desc.jsonl"
    run_cli("-m", "export", "describe", "--source", "fashion-mnist", "--root", idx_root, "--limit", 5,
            "--backend", "blip2", "--model", tmp_path / "blip2", "--prompt", "long", "--batch-size", 2,
            "--out", out)
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(isinstance(r["description"], str) and "Question" not in r["description"] for r in rows)
    meta = json.loads((tmp_path / "desc.jsonl.meta.json").read_text())
    assert meta["backend"] == "blip2" and meta["prompt"] == "Describe this image in detail."
    assert meta["max_new_tokens"] == 120
    # resuming with another backend into the same file is refused
    p = run_cli("-m", "export", "describe", "--source", "fashion-mnist", "--root", idx_root, "--limit", 5,
                "--out", out, check=False)
    assert p.returncode != 0 and "backend" in p.stderr
