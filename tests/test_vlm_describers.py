"""Every transformers describer backend through its real loading code (AutoProcessor +
AutoModelForImageTextToText from a folder), on tiny random models built in the test."""
import json

import pytest

from conftest import ROOT, run_cli

# backend -> (tiny model kind, how the prompt reaches the model)
BACKENDS = {
    "blip2": ("blip2", "Question: {prompt} Answer:"),
    "instructblip": ("instructblip", "{prompt}"),
    "llava": ("llava", "chat"),
    "llava-next": ("llava-next", "chat"),
    "vlm": ("idefics3", "chat"),  # the generic chat backend on a SmolVLM-architecture model
}


@pytest.fixture(scope="module")
def tiny_vlms(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    run_cli(ROOT / "tests" / "make_tiny_vlms.py", *[a for kind in sorted({k for k, _ in BACKENDS.values()})
                                                      for a in (kind, root / kind)])
    return root


def _rows(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backend_describes_in_batches(backend, tiny_vlms, idx_root, tmp_path):
    kind, template = BACKENDS[backend]
    out = tmp_path / "desc.jsonl"
    run_cli("-m", "export", "describe", "--source", "fashion-mnist", "--root", idx_root, "--limit", 5,
            "--backend", backend, "--model", tiny_vlms / kind, "--prompt", "long", "--batch-size", 2,
            "--max-new-tokens", 6, "--out", out)
    rows = _rows(out)
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    # only the answer is kept: the prompt (echoed by decoder-only LMs) is cut off
    assert all(r["description"] and "Describe this image" not in r["description"] for r in rows)
    meta = json.loads((tmp_path / "desc.jsonl.meta.json").read_text())
    assert meta["backend"] == backend and meta["prompt"] == "Describe this image in detail."
    assert meta["prompt_template"] == template and meta["max_new_tokens"] == 6


def test_batched_generation_matches_one_image_at_a_time(tiny_vlms, idx_root, tmp_path):
    """Left padding: a batch of prompts of different lengths gives each image the text it gets alone."""
    for bs in (1, 3):
        run_cli("-m", "export", "describe", "--source", "fashion-mnist", "--root", idx_root, "--limit", 3,
                "--backend", "llava", "--model", tiny_vlms / "llava", "--prompt", "Describe this {class_name}.",
                "--batch-size", bs, "--max-new-tokens", 5, "--cache", "none", "--out", tmp_path / f"b{bs}.jsonl")
    assert _rows(tmp_path / "b1.jsonl") == _rows(tmp_path / "b3.jsonl")


def test_resume_with_another_backend_is_refused_and_missing_chat_template_is_clear(tiny_vlms, idx_root, tmp_path):
    out = tmp_path / "desc.jsonl"
    run_cli("-m", "export", "describe", "--source", "fashion-mnist", "--root", idx_root, "--limit", 2,
            "--backend", "blip2", "--model", tiny_vlms / "blip2", "--out", out)
    p = run_cli("-m", "export", "describe", "--source", "fashion-mnist", "--root", idx_root, "--limit", 2,
                "--out", out, check=False)
    assert p.returncode == 2 and "backend" in p.stderr
    # a chat backend on a model without a chat template names the flag to use instead
    p = run_cli("-m", "export", "describe", "--source", "fashion-mnist", "--root", idx_root, "--limit", 2,
                "--backend", "vlm", "--model", tiny_vlms / "blip2", "--out", tmp_path / "x.jsonl", check=False)
    assert p.returncode == 2 and "--prompt-template" in p.stderr
