"""`export inspect` at ImageNet size: wall time and peak anonymous memory for n/8 and n rows.

A synthetic set stands in for ImageNet-1K's descriptions: `--rows` (default 1,281,167) descriptions
over 1,000 classes, `--dim` (512, CLIP ViT-B) unit-norm embeddings around a centroid per class, written
chunk by chunk. Memory that follows the rows (labels, offsets, hashes: a few bytes each) shows as the
difference between the two sizes; the samples (probes, t-SNE, near-duplicate queries) are the same size
in both runs. Usage: .venv/bin/python scripts/bench_inspect.py [--rows N] [--dim D] [--dir DIR]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_offline import PEAK_ANON_MB, timed  # noqa: E402

CLASSES = 1000
WORDS = "a the small large red blue striped wooden metal photo of on in near with two three old new".split()


def make_set(d: Path, rows: int, dim: int, seed: int = 0) -> None:
    if (d / "emb.meta.json").exists():
        return
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(CLASSES), -(-rows // CLASSES))[:rows]
    centroids = rng.normal(size=(CLASSES, dim)).astype(np.float32)
    emb = np.lib.format.open_memmap(d / "emb.npy", mode="w+", dtype=np.float32, shape=(rows, dim))
    with open(d / "desc.jsonl", "w") as f:
        for start in range(0, rows, 65536):
            y = labels[start:start + 65536]
            x = centroids[y] + 1.5 * rng.normal(size=(len(y), dim)).astype(np.float32)
            emb[start:start + len(y)] = x / np.linalg.norm(x, axis=1, keepdims=True)
            n_words = rng.integers(6, 40, size=len(y))
            f.write("".join(json.dumps({"index": start + k, "label": int(c), "description": " ".join(
                [f"class_{c}"] + list(rng.choice(WORDS, size=n)))}) + "\n" for k, (c, n) in enumerate(zip(y, n_words))))
    emb.flush()
    del emb
    np.save(d / "emb.index.npy", np.arange(rows, dtype=np.int64))
    (d / "emb.meta.json").write_text(json.dumps({"model": "synthetic", "dim": dim, "count": rows}))
    (d / "desc.jsonl.meta.json").write_text(json.dumps({"class_names": [f"class_{c}" for c in range(CLASSES)]}))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_281_167)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dir", default="runs/bench_inspect")
    a = ap.parse_args()
    result = {}
    for rows in (a.rows // 8, a.rows):
        d = Path(a.dir) / f"{rows}"
        make_set(d, rows, a.dim)
        args = ("-m", "export", "inspect", "--descriptions", d / "desc.jsonl", "--embeddings", d / "emb",
                "--out", d / "report")
        seconds, out = timed(*args)
        s = json.loads(out)["sets"]["desc"]
        result[rows] = {"seconds": round(seconds, 1), "peak_anon_mb": round(PEAK_ANON_MB[args]),
                        "knn_accuracy": s["knn_accuracy"], "probe_accuracy": s["probe_accuracy"],
                        "near_duplicate_queries": s["near_duplicate_queries"], "probe_rows": s["probe_rows"],
                        "tsne_rows": s["tsne_rows"]}
        print(json.dumps({rows: result[rows]}), flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
