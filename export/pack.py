"""`python -m export pack`: source images + labels + text embeddings -> MindRecord + manifest.

Layout of the output directory (the contract with the training half, see DESIGN.md):
  train.mindrecord[N]  index int64, label int32, image bytes, text_emb float32[k], description string
  eval.mindrecord[N]   index int64, label int32, image bytes
  manifest.json        dataset, class names, counts, embedding/describer provenance, sha256 per file
Everything is written into `<out>.partial/` and renamed to `<out>` only when complete; an error or an
interruption removes `<out>.partial/`.
"""
import contextlib
import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from . import __version__
from .descriptions import DescriptionSet
from .io_utils import sha256_file, write_json_atomic

TRAIN_SCHEMA = {"index": {"type": "int64"}, "label": {"type": "int32"}, "image": {"type": "bytes"},
                "description": {"type": "string"}}
EVAL_SCHEMA = {"index": {"type": "int64"}, "label": {"type": "int32"}, "image": {"type": "bytes"}}


MAX_SHARDS = 1000  # MindRecord's limit


def auto_shards(source, indices: Sequence[int], extra_bytes: float, max_shard_mb: float, minimum: int = 1) -> int:
    """Enough shard files that each stays under `max_shard_mb`, estimated from up to 64 images spread
    over the split. MindRecord's commit holds about one shard file in memory while it builds the
    index (measured: +140 MB of peak anonymous memory for a 124 MB file), so the shard size bounds pack's memory."""
    if not len(indices):
        return minimum
    sample = [indices[int(k)] for k in np.linspace(0, len(indices) - 1, min(64, len(indices)))]
    per_row = float(np.mean([len(source.encoded(i)) for i in sample])) + extra_bytes + 64
    need = int(np.ceil(per_row * len(indices) / (max_shard_mb * 2 ** 20)))
    return int(min(MAX_SHARDS, max(minimum, need)))


def _write_split(path: Path, schema: Dict, rows, count: int, shards: int, desc: str) -> List[str]:
    from mindspore.mindrecord import FileWriter
    writer = FileWriter(file_name=str(path), shard_num=shards, overwrite=True)
    writer.add_schema(schema, desc)
    writer.add_index(["index", "label"])
    buf = []
    for row in tqdm(rows, total=count, desc=f"pack {desc}", unit="img"):
        buf.append(row)
        if len(buf) == 512:  # bounded memory whatever the dataset size
            writer.write_raw_data(buf)
            buf = []
    if buf:
        writer.write_raw_data(buf)
    writer.commit()
    if shards == 1:
        return [path.name]
    # MindRecord numbers the files itself (zero-padded from 10 files on): list what it wrote
    files = sorted(f.name for f in path.parent.glob(path.name + "*") if not f.name.endswith(".db"))
    if len(files) != shards:
        raise RuntimeError(f"MindRecord wrote {files} for {shards} shards of {path}")
    return files


@contextlib.contextmanager
def _partial_dir(out_dir: Path):
    """Yields OUT.partial to fill. When the block finishes it takes OUT's place by renames (an
    interruption never leaves a half-deleted OUT); on an error or an interruption it is removed."""
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def run_pack(train_source, eval_source, descriptions_path, embeddings_prefix, out_dir,
             eval_indices: Optional[Sequence[int]] = None, shards: int = 1, overwrite: bool = False,
             source_spec: Optional[Dict] = None, max_shard_mb: float = 1024) -> Dict:
    """shards: files per split at least (e.g. the device count); more are used when a file would pass
    `max_shard_mb` (see auto_shards). source_spec: how to reopen the sources ({kind, root,
    train_split, eval_split}); recorded in the manifest so that `verify` can check rows against them."""
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"--shards {shards}: MindRecord takes 1 to {MAX_SHARDS} files")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
    emb = np.load(f"{embeddings_prefix}.npy", mmap_mode="r")
    emb_index = np.load(f"{embeddings_prefix}.index.npy")
    emb_meta = json.loads(Path(f"{embeddings_prefix}.meta.json").read_text())
    descs = DescriptionSet(descriptions_path)  # offsets only: texts are read as they are written
    if len(descs) != len(emb) or not np.array_equal(descs.indices, emb_index):
        raise ValueError(f"{embeddings_prefix}.npy does not match {descriptions_path} "
                         f"({len(emb)} rows vs {len(descs)} descriptions): re-run embed")
    for i, label in zip(descs.indices.tolist(), descs.labels.tolist()):
        if not 0 <= i < len(train_source):
            raise IndexError(f"{descriptions_path}: index {i} out of range for {train_source.name} ({len(train_source)} images)")
        if train_source.label(i) != label:
            raise ValueError(f"{descriptions_path}: index {i} has label {label} but the source says "
                             f"{train_source.label(i)}: descriptions were made for another ordering")
    eval_indices = list(range(len(eval_source))) if eval_indices is None else list(eval_indices)
    dim = int(emb.shape[1])
    train_schema = dict(TRAIN_SCHEMA, text_emb={"type": "float32", "shape": [dim]})

    with _partial_dir(out_dir) as tmp:
        train_rows = ({"index": r["index"], "label": r["label"], "image": train_source.encoded(r["index"]),
                       "text_emb": np.asarray(emb[n], dtype=np.float32), "description": r["description"]}
                      for n, r in enumerate(descs.records()))
        mean_desc = os.path.getsize(descriptions_path) / max(len(descs), 1)  # JSON overhead included: an upper bound
        train_shards = auto_shards(train_source, descs.indices.tolist(), 4 * dim + mean_desc, max_shard_mb, shards)
        eval_shards = auto_shards(eval_source, eval_indices, 0, max_shard_mb, shards)
        train_files = _write_split(tmp / "train.mindrecord", train_schema, train_rows, len(descs), train_shards,
                                   "train")
        eval_rows = ({"index": i, "label": eval_source.label(i), "image": eval_source.encoded(i)} for i in eval_indices)
        eval_files = _write_split(tmp / "eval.mindrecord", EVAL_SCHEMA, eval_rows, len(eval_indices), eval_shards,
                                  "eval")

        dmeta_path = Path(str(descriptions_path) + ".meta.json")
        describer = json.loads(dmeta_path.read_text()) if dmeta_path.exists() else {}
        manifest = {
            "dataset": train_source.name,
            "source": source_spec,
            "class_names": train_source.class_names,
            "num_classes": len(train_source.class_names),
            "embedding": {k: emb_meta.get(k) for k in ("model", "dim", "normalized", "max_tokens")},
            "describer": {k: describer.get(k) for k in ("backend", "model", "prompt")},
            "splits": {
                "train": {"count": len(descs), "columns": sorted(train_schema),
                          "files": [{"name": f, "sha256": sha256_file(tmp / f)} for f in train_files]},
                "eval": {"count": len(eval_indices), "columns": sorted(EVAL_SCHEMA),
                         "files": [{"name": f, "sha256": sha256_file(tmp / f)} for f in eval_files]},
            },
            "tool": f"ms_gpt4image.export {__version__}",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(tmp / "manifest.json", manifest)
    return manifest
