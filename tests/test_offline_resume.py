"""Description cache, custom describer plugins, chunked resumable embed, streamed description files,
and verify checking packed rows against their source."""
import gzip
import hashlib
import json
import shutil

import numpy as np
import pytest

from conftest import run_cli, write_idx
from export.desc_cache import DescriptionCache
from export.describe import run_describe
from export.describers import TemplateDescriber
from export.descriptions import DescriptionSet
from export.embed import run_embed
from export.readers import ArraySource


class CountingDescriber(TemplateDescriber):
    def __init__(self, prompt="p"):
        self.prompt, self.calls = prompt, 0

    def info(self):
        return {"backend": "counting", "model": None, "prompt": self.prompt}

    def describe(self, images, class_names):
        self.calls += len(images)
        return [f"{self.prompt}: {t}" for t in super().describe(images, class_names)]


def _source(images, labels):
    src = ArraySource()
    src.images, src.labels = np.asarray(images, np.uint8), np.asarray(labels)
    src.class_names, src.name = ["zero", "one"], "toy"
    return src


def test_cache_captions_each_image_content_once(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(6, 8, 8)).astype(np.uint8)
    images = np.concatenate([base, base[:2]])  # images 6, 7 duplicate images 0, 1
    src = _source(images, [0, 1, 0, 1, 0, 1, 0, 1])
    cache = DescriptionCache(tmp_path / "cache.sqlite")
    d = CountingDescriber()
    stats = run_describe(src, d, tmp_path / "a.jsonl", range(8), batch_size=8, cache=cache)
    assert d.calls == 6 and stats["cached"] == 2  # duplicates inside the batch captioned once
    # another output file, same images: nothing is captioned again, the text is identical
    d2 = CountingDescriber()
    stats = run_describe(src, d2, tmp_path / "b.jsonl", range(8), batch_size=3, cache=cache)
    assert d2.calls == 0 and stats["cached"] == 8
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    # another prompt is another describer: all misses
    d3 = CountingDescriber(prompt="q")
    run_describe(src, d3, tmp_path / "c.jsonl", range(8), cache=cache)
    assert d3.calls == 6 and len(cache) == 12
    # a changed image is a miss, its unchanged neighbours hit
    src.images[3] = 255 - src.images[3]
    d4 = CountingDescriber()
    run_describe(src, d4, tmp_path / "d.jsonl", range(8), cache=cache)
    assert d4.calls == 1


def test_corrupt_cache_is_a_clear_error(tmp_path):
    (tmp_path / "c.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match="c.sqlite"):
        DescriptionCache(tmp_path / "c.sqlite")


PLUGIN = '''
from export.describers import register_describer

@register_describer("shouting")
class Shouting:
    def __init__(self, prompt="short", **_):
        self.prompt = prompt
    def info(self):
        return {"backend": "shouting", "model": None, "prompt": self.prompt}
    def describe(self, images, class_names):
        return [f"A {n.upper()} ({im.size[0]}px)!" for im, n in zip(images, class_names)]
'''


def test_custom_backend_plugs_in_by_file(idx_root, tmp_path):
    (tmp_path / "my_backend.py").write_text(PLUGIN)
    out = tmp_path / "d.jsonl"
    run_cli("-m", "export", "describe", "--source", "fashion-mnist", "--root", idx_root, "--limit", 4,
            "--plugin", tmp_path / "my_backend.py", "--backend", "shouting", "--out", out)
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 4 and all(r["description"].endswith("(28px)!") for r in rows)
    p = run_cli("-m", "export", "describe", "--source", "fashion-mnist", "--root", idx_root, "--limit", 4,
                "--backend", "shouting", "--out", tmp_path / "e.jsonl", check=False)
    assert p.returncode == 2 and "unknown describer 'shouting'" in p.stderr and "template" in p.stderr


def test_description_set_streams_sorted_last_wins_and_torn_tail(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"index": 5, "label": 1, "description": "five"}, {"index": 2, "label": 0, "description": "two"},
            {"index": 5, "label": 1, "description": "five again"}, {"index": 9, "label": 0, "description": "né"}]
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + '{"index": 11, "la')
    ds = DescriptionSet(p)
    assert ds.indices.tolist() == [2, 5, 9] and ds.labels.tolist() == [0, 1, 0]
    assert ds.texts(0, 10) == ["two", "five again", "né"]
    assert [r["index"] for r in ds.records()] == [2, 5, 9]
    p.write_text('{"index": 1, "label": 0}\n')
    with pytest.raises(ValueError, match="d.jsonl:1.*'description'"):
        DescriptionSet(p)
    p.write_text('{"index": 1, "label": 0, "description": "x"}\nnot json\n{"index": 2}\n')
    with pytest.raises(ValueError, match="d.jsonl:2: not valid JSON"):
        DescriptionSet(p)
    p.write_text('{"index": 1, "label": 0, "description": "x"}\n3\n')  # JSON, but not a record
    with pytest.raises(ValueError, match="d.jsonl:2: a JSON int, not an object"):
        DescriptionSet(p)
    # a write interrupted inside a character: a torn tail like any other
    p.write_bytes(b'{"index": 1, "label": 0, "description": "x"}\n{"index": 2, "label": 0, "description": "caf\xc3')
    assert DescriptionSet(p).indices.tolist() == [1]


# every command that reads a descriptions file, given the folder that holds it (bad.jsonl, bad.csv) and the source
READERS = {
    "embed": lambda d, root: ["embed", "--descriptions", d / "bad.jsonl", "--out", d / "new_emb"],
    "pack": lambda d, root: ["pack", "--root", root, "--descriptions", d / "bad.jsonl", "--embeddings", d / "emb",
                             "--out", d / "data"],
    "inspect": lambda d, root: ["inspect", "--descriptions", d / "bad.jsonl", "--embeddings", d / "emb",
                                "--out", d / "report"],
    "merge": lambda d, root: ["merge", d / "good.jsonl", d / "bad.jsonl", "--out", d / "merged.jsonl"],
    "import-descriptions": lambda d, root: ["import-descriptions", "--root", root, "--src", d / "bad.jsonl",
                                            "--out", d / "imported.jsonl"],
    "import-descriptions csv": lambda d, root: ["import-descriptions", "--root", root, "--src", d / "bad.csv",
                                                "--out", d / "imported.jsonl"],
}


@pytest.mark.parametrize("command", READERS)
def test_a_byte_that_is_not_utf8_is_named_with_its_file_and_line(command, idx_root, tmp_path):
    lines = [json.dumps({"index": i, "label": 0, "description": f"image {i}"}).encode() + b"\n" for i in range(3)]
    lines[2] = lines[2].replace(b"image 2", b"image \xff2")  # line 3: not UTF-8
    (tmp_path / "bad.jsonl").write_bytes(b"".join(lines))
    (tmp_path / "bad.csv").write_bytes(b"index,description\n0,image 0\n1,image \xff1\n")  # line 3 too
    (tmp_path / "good.jsonl").write_text(json.dumps({"index": 5, "label": 0, "description": "image 5"}) + "\n")
    np.save(tmp_path / "emb.npy", np.eye(3, 4, dtype=np.float32))
    np.save(tmp_path / "emb.index.npy", np.arange(3))
    (tmp_path / "emb.meta.json").write_text(json.dumps({"model": "m", "dim": 4, "count": 3}))
    before = sorted(tmp_path.rglob("*"))
    p = run_cli("-m", "export", *READERS[command](tmp_path, idx_root), check=False)
    where = tmp_path / ("bad.csv" if command.endswith("csv") else "bad.jsonl")
    col = where.read_bytes().splitlines()[2].index(b"\xff")  # in the line, not the file
    assert p.returncode == 2 and p.stderr == (f"error: {where}:3: not valid UTF-8 ('utf-8' codec can't decode byte "
                                              f"0xff in position {col}: invalid start byte)\n"), p.stderr
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, not even a folder


class HashEncoder:
    """Deterministic stand-in for a text encoder; can fail after a number of calls (an interruption)."""
    name, dim, max_tokens = "hash", 8, 64

    def __init__(self, fail_after=None):
        self.fail_after, self.texts = fail_after, 0

    def encode(self, texts, batch_size):
        if self.fail_after is not None and self.texts >= self.fail_after:
            raise KeyboardInterrupt
        self.texts += len(texts)
        return np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], np.uint8).astype(np.float32) + 1
                         for t in texts])


def test_interrupted_embed_resumes_at_the_first_missing_chunk(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({"index": i, "label": i % 2, "description": f"image {i}"}) + "\n"
                         for i in range(30)))
    run_embed(p, tmp_path / "full", HashEncoder(), batch_size=1, chunk_size=8)
    with pytest.raises(KeyboardInterrupt):
        run_embed(p, tmp_path / "part", HashEncoder(fail_after=16), batch_size=1, chunk_size=8)
    assert sorted(f.name for f in (tmp_path / "part.parts").glob("chunk_*.npy")) == \
        ["chunk_000000.npy", "chunk_000001.npy"]
    assert not (tmp_path / "part.npy").exists()
    enc = HashEncoder()
    run_embed(p, tmp_path / "part", enc, batch_size=1, chunk_size=8)
    assert enc.texts == 30 - 16  # only the missing chunks were encoded
    assert np.array_equal(np.load(tmp_path / "part.npy"), np.load(tmp_path / "full.npy"))
    assert np.array_equal(np.load(tmp_path / "part.index.npy"), np.arange(30))
    assert not (tmp_path / "part.parts").exists()
    # parts made for other descriptions are not reused
    with pytest.raises(KeyboardInterrupt):
        run_embed(p, tmp_path / "other", HashEncoder(fail_after=8), batch_size=1, chunk_size=8)
    p.write_text(p.read_text().replace("image 3", "image three"))
    enc = HashEncoder()
    run_embed(p, tmp_path / "other", enc, batch_size=1, chunk_size=8)
    assert enc.texts == 30
    # a finished output is kept when run again on the same descriptions; changed descriptions re-encode
    enc = HashEncoder()
    run_embed(p, tmp_path / "other", enc, batch_size=1, chunk_size=8)
    assert enc.texts == 0
    p.write_text(p.read_text().replace("image 4", "image four"))
    run_embed(p, tmp_path / "other", enc, batch_size=1, chunk_size=8)
    assert enc.texts == 30


def test_verify_checks_rows_against_the_source(packed, idx_root, tmp_path):
    p = run_cli("-m", "export", "verify", packed / "data")
    report = json.loads(p.stdout)
    assert report["train"]["against_source"] == "fashion-mnist" and report["train"]["images_checked"] == 80
    # the same files checked against a source in another order fail with the index named
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for name in ("train", "t10k"):
        images = np.frombuffer(gzip.open(idx_root / f"{name}-images-idx3-ubyte.gz").read()[16:], np.uint8)
        labels = np.frombuffer(gzip.open(idx_root / f"{name}-labels-idx1-ubyte.gz").read()[8:], np.uint8)
        order = np.roll(np.arange(len(labels)), 1)
        write_idx(shuffled / f"{name}-images-idx3-ubyte.gz", images.reshape(-1, 28, 28)[order])
        write_idx(shuffled / f"{name}-labels-idx1-ubyte.gz", labels[order])
    p = run_cli("-m", "export", "verify", packed / "data", "--source", "fashion-mnist", "--root", shuffled,
                check=False)
    assert p.returncode == 2 and "train index" in p.stderr and ("source" in p.stderr)
    # shipped without the source (moved root): the files alone are still checked
    data = tmp_path / "data"
    shutil.copytree(packed / "data", data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["source"]["root"] = str(tmp_path / "gone")
    (data / "manifest.json").write_text(json.dumps(manifest))
    report = json.loads(run_cli("-m", "export", "verify", data).stdout)
    assert report["train"]["against_source"] is None and report["train"]["count"] == 80


def test_pack_splits_files_to_stay_under_the_size_cap(tmp_path):
    """1,100 rows (three write batches) into 10+ files: MindRecord spreads every batch over the files
    and numbers them 00, 01, ...; verify checks each file's order and that no index is in two files."""
    from conftest import synthetic_images
    for prefix, n in (("train", 1100), ("t10k", 20)):
        images, labels = synthetic_images(n, seed=2)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    run_cli("-m", "export", "describe", "--root", tmp_path, "--out", tmp_path / "d.jsonl", "--cache", "none")
    np.save(tmp_path / "e.npy", np.random.default_rng(0).normal(size=(1100, 16)).astype(np.float32))
    run_cli("-m", "export", "import-embeddings", "--src", tmp_path / "e.npy", "--descriptions", tmp_path / "d.jsonl",
            "--out", tmp_path / "emb", "--normalize")
    p = run_cli("-m", "export", "pack", "--root", tmp_path, "--descriptions", tmp_path / "d.jsonl",
                "--embeddings", tmp_path / "emb", "--max-shard-mb", 0.05, "--out", tmp_path / "data")
    out = json.loads(p.stdout)
    assert out["train"]["count"] == 1100 and out["train"]["files"] >= 10
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    # MindRecord files are sparse (pages are preallocated): count the blocks really used
    assert all((tmp_path / "data" / f["name"]).stat().st_blocks * 512 < 100_000
               for f in manifest["splits"]["train"]["files"])
    report = json.loads(run_cli("-m", "export", "verify", tmp_path / "data", "--check-images", -1).stdout)
    assert report["train"]["count"] == 1100 and report["train"]["images_checked"] == 1100
    p = run_cli("-m", "export", "pack", "--root", tmp_path, "--descriptions", tmp_path / "d.jsonl",
                "--embeddings", tmp_path / "emb", "--shards", 0, "--out", tmp_path / "bad", check=False)
    assert p.returncode == 2 and "argument --shards: '0'" in p.stderr and not (tmp_path / "bad").exists()


def test_imagefolder_with_an_empty_class_packs_only_when_allowed(tmp_path):
    """describe refuses a class folder without images; --allow-empty-classes keeps its label index,
    pack records the flag, and verify reopens the source the same way. A WebP is stored as PNG."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, classes in (("train", {"ant": 3, "bee": 0, "cow": 2}), ("val", {"ant": 1, "bee": 1, "cow": 1})):
        for cls, n in classes.items():
            (tmp_path / "tree" / split / cls).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                    tmp_path / "tree" / split / cls / f"{k}.{'webp' if cls == 'cow' else 'png'}", lossless=True)
    src = ["--source", "imagefolder", "--root", tmp_path / "tree"]
    p = run_cli("-m", "export", "describe", *src, "--out", tmp_path / "d.jsonl", check=False)
    assert p.returncode == 2 and "'bee'" in p.stderr and "Traceback" not in p.stderr and not (tmp_path / "d.jsonl").exists()
    run_cli("-m", "export", "describe", *src, "--allow-empty-classes", "--out", tmp_path / "d.jsonl", "--cache", "none")
    assert [json.loads(l)["label"] for l in (tmp_path / "d.jsonl").read_text().splitlines()] == [0, 0, 0, 2, 2]
    np.save(tmp_path / "e.npy", rng.normal(size=(5, 8)).astype(np.float32))
    run_cli("-m", "export", "import-embeddings", "--src", tmp_path / "e.npy", "--descriptions", tmp_path / "d.jsonl",
            "--out", tmp_path / "emb", "--normalize")
    run_cli("-m", "export", "pack", *src, "--allow-empty-classes", "--eval-split", "val", "--descriptions",
            tmp_path / "d.jsonl", "--embeddings", tmp_path / "emb", "--out", tmp_path / "data")
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["num_classes"] == 3 and manifest["source"]["allow_empty_classes"] is True
    report = json.loads(run_cli("-m", "export", "verify", tmp_path / "data", "--check-images", -1).stdout)
    assert report["train"]["count"] == 5 and report["train"]["images_checked"] == 5
    # every stored image is one MindSpore decodes (the WebPs were re-encoded losslessly)
    code = ("import mindspore.dataset as ds, mindspore.dataset.vision as v, sys;"
            f"d = ds.MindDataset([{str(tmp_path / 'data' / 'train.mindrecord')!r}], columns_list=['image'], shuffle=False);"
            "d = d.map([v.Decode()], input_columns='image');"
            "print(sum(1 for _ in d.create_tuple_iterator(num_epochs=1)))")
    assert run_cli("-c", code).stdout.strip().splitlines()[-1] == "5"
