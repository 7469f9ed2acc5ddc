"""Bring existing description sets and embedding tensors into the pipeline.

* import-descriptions: the authors' released ImageNet set (a torch-saved Python list of strings in
  ImageFolder order), JSONL ({index, description[, label]}) or CSV (columns index, description)
  -> our descriptions JSONL, labels taken from (and checked against) the source.
* import-embeddings: an [N, k] tensor (.pth / .npy / .safetensors) whose row i belongs to source
  index i (the authors' `*_clip_text_emb_*.pth`) -> our embeddings files for the described indices.
"""
import csv
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .describe import meta_path
from .descriptions import DescriptionSet
from .io_utils import write_json_atomic


def _torch_load(path):
    import torch
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot load with torch.load(weights_only=True): {str(e)[:200]}") from None


def read_description_set(path, fmt: str = "auto") -> Dict[int, Dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"description set not found: {path}")
    if fmt == "auto":
        fmt = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}.get(path.suffix, "torch-list")
    out = {}
    if fmt == "torch-list":
        data = _torch_load(path)
        if not isinstance(data, (list, tuple)) or not all(isinstance(t, str) for t in data):
            raise ValueError(f"{path}: expected a torch-saved list of strings, got {type(data).__name__}")
        return {i: {"description": t} for i, t in enumerate(data)}
    if fmt == "jsonl":
        from .io_utils import read_jsonl
        rows = read_jsonl(path)
    elif fmt == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        raise ValueError(f"unknown description format {fmt!r} (auto|torch-list|jsonl|csv)")
    for n, r in enumerate(rows, 1):
        if "index" not in r or "description" not in r:
            raise ValueError(f"{path}: record {n} needs 'index' and 'description' (has {sorted(r)})")
        i = int(r["index"])
        if i in out:
            raise ValueError(f"{path}: index {i} appears twice (record {n})")
        out[i] = {"description": str(r["description"]),
                  **({"label": int(r["label"])} if r.get("label") not in (None, "") else {})}
    return out


def import_descriptions(src, source, out_path, fmt: str = "auto", prompt: Optional[str] = None) -> Dict:
    records = read_description_set(src, fmt)
    bad = [i for i in records if not 0 <= i < len(source)]
    if bad:
        raise IndexError(f"{src}: indices {bad[:5]} outside {source.name} ({len(source)} images)")
    rows = []
    for i in sorted(records):
        r = records[i]
        label = source.label(i)
        if "label" in r and r["label"] != label:
            raise ValueError(f"{src}: index {i} has label {r['label']}, the source says {label}: another ordering?")
        rows.append({"index": i, "label": label, "description": r["description"]})
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out_path)
    write_json_atomic(meta_path(out_path), {"source": source.name, "class_names": source.class_names,
                                            "backend": "import", "model": Path(src).name, "prompt": prompt})
    return {"descriptions": len(rows), "source_images": len(source), "out": str(out_path)}


def read_embedding_tensor(path, key: Optional[str] = None) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embedding file not found: {path}")
    if path.suffix == ".npy":
        arr = np.load(path)
    elif path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        tensors = load_file(str(path))
        if key is None and len(tensors) != 1:
            raise KeyError(f"{path}: holds {sorted(tensors)}; choose one with --key")
        arr = tensors[key] if key else next(iter(tensors.values()))
    else:
        data = _torch_load(path)
        if isinstance(data, dict):
            if key is None:
                raise KeyError(f"{path}: a dict with keys {sorted(data)[:10]}; choose one with --key")
            data = data[key]
        arr = data.float().numpy()
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected an [N, k] tensor, got shape {arr.shape}")
    return arr


def import_embeddings(src, descriptions_path, out_prefix, model: Optional[str] = None, key: Optional[str] = None,
                      normalize: bool = False) -> Dict:
    """Rows are source indices; the described indices are taken, in the descriptions' order."""
    emb = read_embedding_tensor(src, key)
    idx = DescriptionSet(descriptions_path).indices
    if idx.max() >= len(emb):
        raise IndexError(f"{src}: {len(emb)} rows, but {descriptions_path} describes index {idx.max()}")
    rows = emb[idx]
    bad = np.nonzero(~np.isfinite(rows).all(axis=1))[0]
    if len(bad):
        raise ValueError(f"{src}: NaN/inf in rows for indices {idx[bad[:5]].tolist()}")
    norms = np.linalg.norm(rows, axis=1)
    if normalize:
        if np.any(norms == 0):
            raise ValueError(f"{src}: zero rows at indices {idx[norms == 0][:5].tolist()}")
        rows = rows / norms[:, None]
    elif np.abs(norms - 1).max() > 1e-3:
        worst = int(np.argmax(np.abs(norms - 1)))
        raise ValueError(f"{src}: row for index {idx[worst]} has norm {norms[worst]:.4f}; pass --normalize to L2-normalise")
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    for final, arr in ((Path(f"{out_prefix}.npy"), rows.astype(np.float32)), (Path(f"{out_prefix}.index.npy"), idx)):
        tmp = final.with_name(final.name + ".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(final)
    meta = {"model": model or Path(src).name, "dim": int(rows.shape[1]), "count": len(rows), "normalized": "l2",
            "dtype": "float32", "max_tokens": None, "descriptions": str(descriptions_path), "imported_from": str(src)}
    write_json_atomic(f"{out_prefix}.meta.json", meta)
    return meta
