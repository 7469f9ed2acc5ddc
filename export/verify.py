"""`python -m export verify`: read packed MindRecord back with mindspore.dataset and check it.

Checks sha256 against the manifest, counts, label range, embedding dim, unit norms, NaN/inf,
decodable images and that `index` is strictly increasing (the source's canonical order).
Raises ValueError naming the file and index on the first mismatch.
"""
import io
import json
from pathlib import Path
from typing import Dict

import numpy as np
from PIL import Image

from .io_utils import sha256_file


def run_verify(data_dir, decode_images: int = 64) -> Dict:
    import mindspore.dataset as ds
    data_dir = Path(data_dir)
    mpath = data_dir / "manifest.json"
    if not mpath.exists():
        raise FileNotFoundError(f"{mpath}: no manifest (is this a packed directory?)")
    manifest = json.loads(mpath.read_text())
    num_classes, dim = manifest["num_classes"], manifest["embedding"]["dim"]
    report = {}
    for split, info in manifest["splits"].items():
        files = [data_dir / f["name"] for f in info["files"]]
        for f, entry in zip(files, info["files"]):
            if not f.exists():
                raise FileNotFoundError(f"{f}: listed in the manifest but missing")
            if sha256_file(f) != entry["sha256"]:
                raise ValueError(f"{f}: sha256 differs from the manifest (file changed or truncated)")
        columns = info["columns"]
        data = ds.MindDataset([str(f) for f in files], columns_list=columns, shuffle=False)
        count, last, decoded, norms = 0, -1, 0, []
        for row in data.create_dict_iterator(output_numpy=True, num_epochs=1):
            idx, label = int(row["index"]), int(row["label"])
            where = f"{split} index {idx}"
            if idx <= last:
                raise ValueError(f"{files[0]}: {where} follows index {last}: order is not the source's")
            last = idx
            if not 0 <= label < num_classes:
                raise ValueError(f"{files[0]}: {where} has label {label} outside [0, {num_classes})")
            if "text_emb" in row:
                e = row["text_emb"]
                if e.shape != (dim,):
                    raise ValueError(f"{files[0]}: {where} text_emb shape {e.shape}, manifest dim {dim}")
                if not np.all(np.isfinite(e)):
                    raise ValueError(f"{files[0]}: {where} text_emb has NaN/inf")
                norms.append(float(np.linalg.norm(e)))
                if abs(norms[-1] - 1) > 1e-3:
                    raise ValueError(f"{files[0]}: {where} text_emb norm {norms[-1]:.4f} is not 1")
            if decoded < decode_images:
                try:
                    Image.open(io.BytesIO(row["image"].tobytes())).load()
                except Exception as e:
                    raise ValueError(f"{files[0]}: {where} image does not decode ({e})") from None
                decoded += 1
            count += 1
        if count != info["count"]:
            raise ValueError(f"{files[0]}: {count} rows, manifest says {info['count']}")
        report[split] = {"count": count, "first_index_ok": True,
                         **({"norm_min": min(norms), "norm_max": max(norms)} if norms else {})}
    return report
