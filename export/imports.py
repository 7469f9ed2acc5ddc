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
from typing import Dict, Optional

import numpy as np

from .describe import meta_path
from .descriptions import DescriptionSet
from .io_utils import atomic_path, npy_writer, read_jsonl, save_npy_atomic, text_lines, write_json_atomic


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
        rows = read_jsonl(path)
    elif fmt == "csv":
        rows = list(csv.DictReader(text_lines(path)))  # lines with their ends, as open(newline="") gives csv
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
    with atomic_path(out_path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    write_json_atomic(meta_path(out_path), {"source": source.name, "class_names": source.class_names,
                                            "backend": "import", "model": Path(src).name, "prompt": prompt})
    return {"descriptions": len(rows), "source_images": len(source), "out": str(out_path)}


def read_embedding_tensor(path, key: Optional[str] = None):
    """An [N, k] array-like whose rows are read on indexing: .npy and .pth are memory-mapped and
    .safetensors read by slice, so importing ImageNet's 1.28M x 768 embeddings does not load 4 GB."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embedding file not found: {path}")
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
    elif path.suffix == ".safetensors":
        from safetensors import safe_open
        f = safe_open(str(path), framework="numpy")
        names = list(f.keys())
        if key is None and len(names) != 1:
            raise KeyError(f"{path}: holds {sorted(names)}; choose one with --key")
        if key is not None and key not in names:
            raise KeyError(f"{path}: no tensor {key!r}; it holds {sorted(names)}")
        arr = _SafetensorsRows(f.get_slice(key or names[0]))
    else:
        import torch
        try:  # mmap needs the zip format torch.save has written since 1.6
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            data = _torch_load(path)
        except Exception as e:
            raise ValueError(f"{path}: cannot load with torch.load(weights_only=True): {str(e)[:200]}") from None
        if isinstance(data, dict):
            if key is None:
                raise KeyError(f"{path}: a dict with keys {sorted(data)[:10]}; choose one with --key")
            data = data[key]
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"{path}: expected a tensor, got {type(data).__name__}")
        arr = _TorchRows(data)
    if len(arr.shape) != 2:
        raise ValueError(f"{path}: expected an [N, k] tensor, got shape {tuple(arr.shape)}")
    return arr


class _SafetensorsRows:
    def __init__(self, sl):
        self.sl, self.shape = sl, tuple(sl.get_shape())

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        lo, hi = int(idx.min()), int(idx.max()) + 1  # one contiguous read per chunk
        return np.asarray(self.sl[lo:hi])[idx - lo]


class _TorchRows:
    def __init__(self, tensor):
        self.t, self.shape = tensor, tuple(tensor.shape)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        import torch
        return self.t[torch.from_numpy(idx)].float().numpy()


def import_embeddings(src, descriptions_path, out_prefix, model: Optional[str] = None, key: Optional[str] = None,
                      normalize: bool = False, chunk: int = 65536) -> Dict:
    """Rows are source indices; the described indices are taken, in the descriptions' order, and
    written chunk by chunk into PREFIX.npy (renamed into place only when every row passed)."""
    emb = read_embedding_tensor(src, key)
    idx = DescriptionSet(descriptions_path).indices
    n_rows, dim = emb.shape
    if idx.max() >= n_rows:
        raise IndexError(f"{src}: {n_rows} rows, but {descriptions_path} describes index {idx.max()}")
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    with npy_writer(f"{out_prefix}.npy", (len(idx), dim)) as out:
        for start in range(0, len(idx), chunk):
            part = idx[start:start + chunk]
            rows = np.asarray(emb[part], dtype=np.float32)
            bad = np.nonzero(~np.isfinite(rows).all(axis=1))[0]
            if len(bad):
                raise ValueError(f"{src}: NaN/inf in rows for indices {part[bad[:5]].tolist()}")
            norms = np.linalg.norm(rows, axis=1)
            if normalize:
                if np.any(norms == 0):
                    raise ValueError(f"{src}: zero rows at indices {part[norms == 0][:5].tolist()}")
                rows = rows / norms[:, None]
            elif np.abs(norms - 1).max() > 1e-3:
                worst = int(np.argmax(np.abs(norms - 1)))
                raise ValueError(f"{src}: row for index {part[worst]} has norm {norms[worst]:.4f}; "
                                 f"pass --normalize to L2-normalise")
            out[start:start + len(part)] = rows
    save_npy_atomic(f"{out_prefix}.index.npy", idx)
    meta = {"model": model or Path(src).name, "dim": int(dim), "count": len(idx), "normalized": "l2",
            "dtype": "float32", "max_tokens": None, "descriptions": str(descriptions_path), "imported_from": str(src)}
    write_json_atomic(f"{out_prefix}.meta.json", meta)
    return meta
