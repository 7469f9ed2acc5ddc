"""`python -m export describe`: one description per image -> JSONL {index, label, description}.

Resumable: indices already in the output are skipped, a torn last line is rewritten. A meta file
beside the output records the backend, model and prompt; resuming with a different one is an error.
"""
import json
from pathlib import Path
from typing import Dict, Sequence

from tqdm import tqdm

from .io_utils import read_jsonl, truncate_torn_tail, write_json_atomic


def meta_path(out_path) -> Path:
    return Path(str(out_path) + ".meta.json")


def run_describe(source, describer, out_path, indices: Sequence[int], batch_size: int = 64) -> Dict:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"source": source.name, "class_names": source.class_names, **describer.info()}
    mpath = meta_path(out_path)
    if out_path.exists() and mpath.exists():
        old = json.loads(mpath.read_text())
        for key in ("backend", "model", "prompt", "source"):
            if old.get(key) != meta.get(key):
                raise ValueError(f"{out_path} was written with {key}={old.get(key)!r}, not {meta.get(key)!r}; "
                                 f"use another output file")
    write_json_atomic(mpath, meta)

    truncate_torn_tail(out_path)
    done = {r["index"] for r in read_jsonl(out_path)} if out_path.exists() else set()
    todo = [i for i in indices if i not in done]
    with open(out_path, "a", encoding="utf-8") as f, \
            tqdm(total=len(indices), initial=len(indices) - len(todo), desc="describe", unit="img") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            labels = [source.label(i) for i in batch]
            texts = describer.describe([source.image(i) for i in batch], [source.class_names[l] for l in labels])
            f.write("".join(json.dumps({"index": i, "label": l, "description": t}, ensure_ascii=False) + "\n"
                            for i, l, t in zip(batch, labels, texts)))
            f.flush()
            bar.update(len(batch))
    return {"written": len(todo), "skipped": len(indices) - len(todo), "total": len(indices)}


def parse_shard(text: str):
    """'i/n' -> (i, n): this worker takes every n-th image starting at i (0 <= i < n)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def merge_descriptions(parts, out_path) -> Dict:
    """Merges the JSONL files of `describe --shard i/n` runs into one, sorted by index. Refuses parts
    written with different backends/models/prompts and indices described twice."""
    out_path = Path(out_path)
    metas, rows, seen = [], [], {}
    for part in map(Path, parts):
        if not part.exists():
            raise FileNotFoundError(f"description part not found: {part}")
        m = meta_path(part)
        metas.append(json.loads(m.read_text()) if m.exists() else {})
        for r in read_jsonl(part):
            if r["index"] in seen:
                raise ValueError(f"index {r['index']} is in both {seen[r['index']]} and {part}")
            seen[r["index"]] = part
            rows.append(r)
    for key in ("backend", "model", "prompt", "source"):
        values = {str(m.get(key)) for m in metas}
        if len(values) > 1:
            raise ValueError(f"parts differ in {key}: {sorted(values)}")
    rows.sort(key=lambda r: r["index"])
    tmp = out_path.with_name(out_path.name + ".partial")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out_path)
    if metas and metas[0]:
        write_json_atomic(meta_path(out_path), metas[0])
    return {"parts": len(metas), "descriptions": len(rows), "out": str(out_path)}
