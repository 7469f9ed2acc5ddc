"""Template describer, prompts, upsampling and resumable JSONL."""
import json

import numpy as np
from PIL import Image

from export.describe import run_describe
from export.describers import PROMPTS, TemplateDescriber, create_describer, upsample_for_captioning
from export.readers import open_source


def test_paper_prompts():
    assert PROMPTS["short"] == "Write a one-sentence short description about this image."
    assert PROMPTS["long"] == "Describe this image in detail."


def test_upsample_small_images_to_224():
    assert upsample_for_captioning(Image.new("L", (32, 32))).size == (224, 224)
    assert upsample_for_captioning(Image.new("RGB", (28, 56))).size == (224, 448)
    assert upsample_for_captioning(Image.new("RGB", (300, 400))).size == (300, 400)


def test_template_descriptions_follow_the_image(idx_root):
    src = open_source("fashion-mnist", idx_root)
    same_class = [i for i in range(len(src)) if src.label(i) == 3][:8]
    texts = create_describer("template").describe([src.image(i) for i in same_class], ["dress"] * len(same_class))
    assert all("dress" in t for t in texts)
    assert len(set(texts)) > 1, "every image of a class got the same sentence"
    dark = Image.fromarray(np.pad(np.full((10, 10), 60, np.uint8), 9))
    bright = Image.fromarray(np.pad(np.full((24, 24), 250, np.uint8), 2))
    d, b = TemplateDescriber().describe([dark, bright], ["bag", "bag"])
    assert "small" in d and "large" in b and "dark grey" in d and "white" in b


def _read(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_resume_after_interruption_matches_uninterrupted_run(idx_root, tmp_path):
    src = open_source("fashion-mnist", idx_root)
    full = tmp_path / "full.jsonl"
    run_describe(src, TemplateDescriber(), full, list(range(50)), batch_size=8)
    part = tmp_path / "part.jsonl"
    lines = full.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:21]) + lines[21][:17])  # killed mid-line
    (tmp_path / "part.jsonl.meta.json").write_text((tmp_path / "full.jsonl.meta.json").read_text())
    stats = run_describe(src, TemplateDescriber(), part, list(range(50)), batch_size=8)
    assert stats == {"written": 29, "skipped": 21, "unreadable": 0, "cached": 0, "total": 50}
    assert sorted(_read(part), key=lambda r: r["index"]) == _read(full)
    assert run_describe(src, TemplateDescriber(), part, list(range(50)))["written"] == 0


def test_undecodable_images_stop_the_run_or_are_recorded(tmp_path):
    from export.readers import ImageFolderSource
    for cls in ("cat", "dog"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(tmp_path / "img" / cls / f"{k}.png")
    (tmp_path / "img" / "dog" / "1.png").write_bytes(b"broken")
    src = ImageFolderSource(tmp_path / "img")
    import pytest
    with pytest.raises(ValueError, match="dog/1.png.*--skip-bad"):
        run_describe(src, TemplateDescriber(), tmp_path / "a.jsonl", list(range(6)), batch_size=4)
    stats = run_describe(src, TemplateDescriber(), tmp_path / "b.jsonl", list(range(6)), batch_size=4, skip_bad=True)
    assert stats["unreadable"] == 1 and stats["written"] == 5
    assert [r["index"] for r in _read(tmp_path / "b.jsonl")] == [0, 1, 2, 3, 5]
    (skipped,) = _read(tmp_path / "b.jsonl.skipped.jsonl")
    assert skipped["index"] == 4 and "dog/1.png" in skipped["error"]
    # resuming neither retries nor duplicates the skipped image
    again = run_describe(src, TemplateDescriber(), tmp_path / "b.jsonl", list(range(6)), skip_bad=True)
    assert again["written"] == 0 and len(_read(tmp_path / "b.jsonl.skipped.jsonl")) == 1
