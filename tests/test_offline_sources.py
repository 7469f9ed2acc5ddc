"""Offline stage for real datasets: CIFAR pickles, sharded describe + merge, importing existing
description sets and embedding tensors, the CLIP text encoder on a tiny random model."""
import json
import pickle

import numpy as np
import pytest

from conftest import ROOT, run_cli
from export.describe import merge_descriptions, run_describe
from export.describers import TemplateDescriber
from export.imports import import_descriptions, import_embeddings
from export.readers import open_source


def _cifar(root, kind):
    rng = np.random.default_rng(0)
    if kind == "cifar10":
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
            data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
            pickle.dump({b"data": data, b"labels": [(i + j) % 10 for j in range(4)]}, open(d / name, "wb"))
        pickle.dump({b"label_names": [f"c{k}".encode() for k in range(10)]}, open(d / "batches.meta", "wb"))
    else:
        d = root / "cifar-100-python"
        d.mkdir(parents=True)
        for name, n in (("train", 6), ("test", 3)):
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": list(range(n)), b"coarse_labels": [0] * n}, open(d / name, "wb"))
        pickle.dump({b"fine_label_names": [f"f{k}".encode() for k in range(100)]}, open(d / "meta", "wb"))
    return d


def test_cifar_readers(tmp_path):
    d10 = _cifar(tmp_path / "c10", "cifar10")
    src = open_source("cifar10", tmp_path / "c10", "train")
    assert len(src) == 20 and src.class_names[3] == "c3" and src.label(4) == 1  # batch 2 starts at label 1
    raw = pickle.load(open(d10 / "data_batch_1", "rb"), encoding="bytes")[b"data"][2]
    np.testing.assert_array_equal(np.asarray(src.image(2)), raw.reshape(3, 32, 32).transpose(1, 2, 0))
    assert len(open_source("cifar10", tmp_path / "c10", "test")) == 4
    _cifar(tmp_path / "c100", "cifar100")
    src = open_source("cifar100", tmp_path / "c100", "train")
    assert len(src) == 6 and len(src.class_names) == 100 and src.label(5) == 5  # fine labels
    (d10 / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        open_source("cifar10", tmp_path / "c10", "test")


def test_sharded_describe_merges_into_the_unsharded_file(idx_root, tmp_path):
    src = open_source("fashion-mnist", idx_root)
    run_describe(src, TemplateDescriber(), tmp_path / "all.jsonl", list(range(30)))
    for i in range(3):
        run_describe(src, TemplateDescriber(), tmp_path / f"part{i}.jsonl", list(range(30))[i::3])
    merge_descriptions([tmp_path / f"part{i}.jsonl" for i in range(3)], tmp_path / "merged.jsonl")
    assert (tmp_path / "merged.jsonl").read_text() == (tmp_path / "all.jsonl").read_text()
    with pytest.raises(ValueError, match="index 0 is in both"):
        merge_descriptions([tmp_path / "part0.jsonl", tmp_path / "all.jsonl"], tmp_path / "bad.jsonl")


def test_import_description_sets(idx_root, tmp_path):
    src = open_source("fashion-mnist", idx_root)
    (tmp_path / "d.csv").write_text("index,description\n2,a coat\n0,a boot\n")
    out = import_descriptions(tmp_path / "d.csv", src, tmp_path / "from_csv.jsonl")
    rows = [json.loads(l) for l in (tmp_path / "from_csv.jsonl").read_text().splitlines()]
    assert out["descriptions"] == 2 and [r["index"] for r in rows] == [0, 2] and rows[0]["label"] == src.label(0)
    (tmp_path / "d.jsonl").write_text(json.dumps({"index": 1, "label": (src.label(1) + 1) % 10, "description": "x"}) + "\n")
    with pytest.raises(ValueError, match="index 1 has label"):
        import_descriptions(tmp_path / "d.jsonl", src, tmp_path / "bad.jsonl")
    # the authors' format: a torch-saved list of strings in the source's order (torch in its own process)
    code = f"import torch; torch.save(['desc %d' % i for i in range(96)], '{tmp_path / 'set.pth'}')"
    run_cli("-c", code)
    run_cli("-m", "export", "import-descriptions", "--root", idx_root, "--src", tmp_path / "set.pth",
            "--out", tmp_path / "from_pth.jsonl")
    rows = [json.loads(l) for l in (tmp_path / "from_pth.jsonl").read_text().splitlines()]
    assert len(rows) == 96 and rows[7] == {"index": 7, "label": src.label(7), "description": "desc 7"}


def test_import_embedding_tensors_and_pack(idx_root, tmp_path):
    src = open_source("fashion-mnist", idx_root)
    rows = "".join(json.dumps({"index": i, "description": f"d{i}"}) + "\n" for i in (1, 4, 5))
    (tmp_path / "d.jsonl").write_text(rows)
    import_descriptions(tmp_path / "d.jsonl", src, tmp_path / "desc.jsonl")
    emb = np.random.default_rng(0).normal(size=(96, 8)).astype(np.float32)
    np.save(tmp_path / "raw.npy", emb)
    with pytest.raises(ValueError, match="--normalize"):
        import_embeddings(tmp_path / "raw.npy", tmp_path / "desc.jsonl", tmp_path / "e")
    meta = import_embeddings(tmp_path / "raw.npy", tmp_path / "desc.jsonl", tmp_path / "e", model="clip-rn50",
                             normalize=True)
    got = np.load(tmp_path / "e.npy")
    np.testing.assert_allclose(got, emb[[1, 4, 5]] / np.linalg.norm(emb[[1, 4, 5]], axis=1, keepdims=True), rtol=1e-6)
    assert meta["dim"] == 8 and np.load(tmp_path / "e.index.npy").tolist() == [1, 4, 5]
    from safetensors.numpy import save_file
    save_file({"emb": got[[0, 0, 0, 0, 0]]}, str(tmp_path / "short.safetensors"))  # rows 0..4 only
    with pytest.raises(IndexError, match="describes index 5"):
        import_embeddings(tmp_path / "short.safetensors", tmp_path / "desc.jsonl", tmp_path / "x")
    save_file({"emb": emb, "other": emb[:2]}, str(tmp_path / "all.safetensors"))
    with pytest.raises(KeyError, match="--key"):
        import_embeddings(tmp_path / "all.safetensors", tmp_path / "desc.jsonl", tmp_path / "x")
    import_embeddings(tmp_path / "all.safetensors", tmp_path / "desc.jsonl", tmp_path / "s", key="emb",
                      normalize=True, chunk=2)  # rows read by slice, two chunks
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), got)
    # the authors' .pth (a dict of tensors), memory-mapped by torch in its own process
    np.save(tmp_path / "emb_for_pth.npy", emb)
    run_cli("-c", f"import numpy, torch; torch.save({{'text_emb': torch.from_numpy(numpy.load("
                  f"{str(tmp_path / 'emb_for_pth.npy')!r}))}}, {str(tmp_path / 'emb.pth')!r})")
    run_cli("-m", "export", "import-embeddings", "--src", tmp_path / "emb.pth", "--key", "text_emb",
            "--descriptions", tmp_path / "desc.jsonl", "--out", tmp_path / "p", "--normalize")
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), got, rtol=1e-6)
    assert not list(tmp_path.glob("*partial*"))  # failed imports left nothing half written
    run_cli("-m", "export", "pack", "--root", idx_root, "--descriptions", tmp_path / "desc.jsonl",
            "--embeddings", tmp_path / "e", "--eval-limit", 5, "--out", tmp_path / "data")
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["embedding"]["model"] == "clip-rn50" and manifest["splits"]["train"]["count"] == 3
    run_cli("-m", "export", "verify", tmp_path / "data")


def test_clip_text_encoder_on_a_tiny_random_model(idx_root, tmp_path):
    run_cli(ROOT / "tests" / "make_tiny_clip.py", tmp_path / "clip")
    run_cli("-m", "export", "describe", "--root", idx_root, "--limit", 12, "--out", tmp_path / "d.jsonl")
    meta = json.loads(run_cli("-m", "export", "embed", "--descriptions", tmp_path / "d.jsonl", "--backend", "hf-clip",
                              "--model", tmp_path / "clip", "--out", tmp_path / "e", "--batch-size", 5).stdout)
    emb = np.load(tmp_path / "e.npy")
    assert meta["dim"] == 24 and emb.shape == (12, 24) and meta["max_tokens"] == 16
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_open_clip_backend_fails_clearly_without_open_clip(idx_root, tmp_path):
    run_cli("-m", "export", "describe", "--root", idx_root, "--limit", 2, "--out", tmp_path / "d.jsonl")
    p = run_cli("-m", "export", "embed", "--descriptions", tmp_path / "d.jsonl", "--backend", "open-clip",
                "--model", "RN50:openai", "--out", tmp_path / "e", check=False)
    if p.returncode == 0:
        pytest.skip("open_clip is importable here")
    assert p.returncode == 2 and "open_clip" in p.stderr and not (tmp_path / "e.npy").exists()
