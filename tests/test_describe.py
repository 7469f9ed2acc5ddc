"""Template describer, prompts, upsampling and resumable JSONL."""
import json

import numpy as np
import pytest
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


def test_template_describes_tiny_and_odd_images():
    rng = np.random.default_rng(0)
    odd = [Image.new("RGB", (1, 1), (0, 0, 255)), Image.new("L", (1, 7)), Image.new("RGB", (2000, 8), (0, 0, 255)),
           Image.fromarray((rng.random((20, 20)) * 65535).astype(np.uint16)), Image.new("CMYK", (9, 9)),
           Image.new("P", (5, 5)), Image.new("RGBA", (3, 3))]
    texts = TemplateDescriber().describe(odd, ["kite"] * len(odd))
    assert len(texts) == len(odd) and all(t.startswith("A ") and "kite" in t for t in texts)
    assert "blue kite" in texts[0] and "wider than it is tall" in texts[2]


def test_describer_errors_name_the_image(tmp_path):
    from export.readers import ImageFolderSource

    class FailsOnTiny:  # fails only when one image of the batch is smaller than 2 px
        def info(self):
            return {"backend": "fails-on-tiny", "model": None, "prompt": None}

        def describe(self, images, names):
            if any(min(im.size) < 2 for im in images):
                raise RuntimeError("tensor too small")
            return ["a picture"] * len(images)

    for cls, size in (("ant", 30), ("bee", 1), ("cow", 30)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        Image.new("RGB", (size, size)).save(tmp_path / "data" / cls / f"{cls}.png")
    src = ImageFolderSource(tmp_path / "data")
    with pytest.raises(ValueError, match=r"'fails-on-tiny' failed on image #1 \(.*bee\.png\): RuntimeError: tensor too small"):
        run_describe(src, FailsOnTiny(), tmp_path / "d.jsonl", range(3), batch_size=3)
