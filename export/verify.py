"""`python -m export verify`: read packed MindRecord back with mindspore.dataset and check it.

Checks sha256 against the manifest, counts, label range, embedding dim, unit norms, NaN/inf,
decodable images and that `index` is strictly increasing; and, when the source is at hand (the
manifest names it; `--source/--root` override), that every row's label and a spread sample of its
images are those of the source at that index, i.e. that index order matches the source.
Raises ValueError naming the file and index on the first mismatch.
"""
import io
import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from PIL import Image

from .io_utils import sha256_file


def _open_split_source(manifest: Dict, spec: Optional[Dict], split: str, explicit: bool):
    """The source a split was packed from, or None when it cannot be found (files shipped without it)."""
    from .readers import open_source
    if not spec:
        return None
    packed = manifest.get("source") or {}
    split_name = packed.get("train_split", "train") if split == "train" else packed.get("eval_split", "test")
    try:
        return open_source(spec.get("kind") or packed.get("kind"), spec.get("root"), split_name,
                           allow_empty_classes=packed.get("allow_empty_classes", False))
    except (FileNotFoundError, ValueError):
        if explicit:
            raise
        return None


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def run_verify(data_dir, check_images: int = 256, source_spec: Optional[Dict] = None,
               no_source: bool = False) -> Dict:
    """source_spec: {kind, root} to check against; default the manifest's. Every row's label is
    compared with the source's label at its index (this catches another ordering), and
    `check_images` rows per split, spread evenly, are decoded and compared pixel for pixel."""
    import mindspore.dataset as ds
    data_dir = Path(data_dir)
    mpath = data_dir / "manifest.json"
    if not mpath.exists():
        raise FileNotFoundError(f"{mpath}: no manifest (is this a packed directory?)")
    manifest = json.loads(mpath.read_text())
    num_classes, dim = manifest["num_classes"], manifest["embedding"]["dim"]
    explicit = source_spec is not None
    spec = None if no_source else (source_spec or manifest.get("source"))
    report = {}
    for split, info in manifest["splits"].items():
        files = [data_dir / f["name"] for f in info["files"]]
        for f, entry in zip(files, info["files"]):
            if not f.exists():
                raise FileNotFoundError(f"{f}: listed in the manifest but missing")
            if sha256_file(f) != entry["sha256"]:
                raise ValueError(f"{f}: sha256 differs from the manifest (file changed or truncated)")
        source = _open_split_source(manifest, spec, split, explicit)
        step = 1 if check_images < 0 else max(1, info["count"] // max(check_images, 1))
        columns = info["columns"]
        count, compared, seen, norm_range = 0, 0, set(), [np.inf, -np.inf]
        for f in files:  # MindRecord spreads rows over shard files; each file keeps the source order
            data = ds.MindDataset([str(f)], columns_list=columns, shuffle=False)
            last = -1
            for row in data.create_dict_iterator(output_numpy=True, num_epochs=1):
                idx, label = int(row["index"]), int(row["label"])
                where = f"{split} index {idx}"
                if idx <= last:
                    raise ValueError(f"{f}: {where} follows index {last}: order is not the source's")
                if idx in seen:
                    raise ValueError(f"{f}: {where} is also in another file of the split")
                seen.add(idx)
                last = idx
                if not 0 <= label < num_classes:
                    raise ValueError(f"{f}: {where} has label {label} outside [0, {num_classes})")
                if source is not None:
                    if idx >= len(source):
                        raise ValueError(f"{f}: {where} is past the end of the source ({len(source)} images)")
                    if source.label(idx) != label:
                        raise ValueError(f"{f}: {where} has label {label}, the source {source.name} says "
                                         f"{source.label(idx)}: rows do not follow the source's order")
                if "text_emb" in row:
                    e = row["text_emb"]
                    if e.shape != (dim,):
                        raise ValueError(f"{f}: {where} text_emb shape {e.shape}, manifest dim {dim}")
                    if not np.all(np.isfinite(e)):
                        raise ValueError(f"{f}: {where} text_emb has NaN/inf")
                    norm = float(np.linalg.norm(e))
                    if abs(norm - 1) > 1e-3:
                        raise ValueError(f"{f}: {where} text_emb norm {norm:.4f} is not 1")
                    norm_range = [min(norm_range[0], norm), max(norm_range[1], norm)]
                if check_images and count % step == 0:
                    try:
                        img = Image.open(io.BytesIO(row["image"].tobytes()))
                        img.load()
                    except Exception as e:
                        raise ValueError(f"{f}: {where} image does not decode ({e})") from None
                    if source is not None and not np.array_equal(_pixels(img), _pixels(source.image(idx))):
                        raise ValueError(f"{f}: {where}: the image differs from the source's image {idx}")
                    compared += 1
                count += 1
        if count != info["count"]:
            raise ValueError(f"{files[0]}: {count} rows, manifest says {info['count']}")
        report[split] = {"count": count, "images_checked": compared,
                         "against_source": source.name if source is not None else None,
                         **({"norm_min": norm_range[0], "norm_max": norm_range[1]} if "text_emb" in columns else {})}
    return report
