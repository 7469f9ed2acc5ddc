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
