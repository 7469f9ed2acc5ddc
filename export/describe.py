"""`python -m export describe`: one description per image -> JSONL {index, label, description}.

Resumable: indices already in the output are skipped, a torn last line is rewritten. A meta file
beside the output records the backend, model and prompt; resuming with a different one is an error.
With a description cache (desc_cache.py), an image whose content was captioned before by the same
describer, under any output file, is not captioned again.
"""
import json
from pathlib import Path
from typing import Dict, List, Sequence, Set, Tuple

from tqdm import tqdm

from .desc_cache import describer_identity, image_key
from .io_utils import atomic_path, read_jsonl, truncate_torn_tail, whole_lines, write_json_atomic


def meta_path(out_path) -> Path:
    return Path(str(out_path) + ".meta.json")


def skipped_path(out_path) -> Path:
    return Path(str(out_path) + ".skipped.jsonl")


def open_output(source, info: Dict, out_path) -> Tuple[Set[int], Set[int]]:
    """Checks and writes OUT.meta.json for this source and describer (`info`: its info()), cuts torn
    last lines off OUT and OUT.skipped.jsonl, and returns the indices already described and those
    already recorded as unreadable. Resuming with another backend/model/prompt is an error."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"source": source.name, "class_names": source.class_names, **info}
    mpath = meta_path(out_path)
    if out_path.exists() and mpath.exists():
        old = json.loads(mpath.read_text())
        for key in ("backend", "model", "prompt", "prompt_template", "source"):
            if old.get(key) != meta.get(key):
                raise ValueError(f"{out_path} was written with {key}={old.get(key)!r}, not {meta.get(key)!r}; "
                                 f"use another output file")
    write_json_atomic(mpath, meta)
    truncate_torn_tail(out_path)
    done = {r["index"] for r in read_jsonl(out_path)} if out_path.exists() else set()
    spath = skipped_path(out_path)
    truncate_torn_tail(spath)
    skipped = {r["index"] for r in read_jsonl(spath)} if spath.exists() else set()
    return done, skipped


def description_line(row: Dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def skipped_line(record: Dict) -> str:
    return json.dumps(record) + "\n"


def describe_batch(source, describer, batch: Sequence[int], skip_bad: bool = False, cache=None,
                   identity: str = None) -> Tuple[List[Dict], List[Dict], int]:
    """Describes the images `batch` (source indices) in one call of the describer (cache misses only).
    Returns the rows {index, label, description}, the records {index, error} of images that could not
    be decoded (only with skip_bad; otherwise the first one stops the run, named) and the cache hits."""
    images, kept, unreadable = [], [], []
    for i in batch:
        try:
            images.append(source.image(i))
            kept.append(i)
        except ValueError as e:  # undecodable image: the error names index and path
            if not skip_bad:
                raise ValueError(f"{e} (pass --skip-bad to record and skip such images)") from None
            unreadable.append({"index": i, "error": str(e)})
    labels = [source.label(i) for i in kept]
    names = [source.class_names[l] for l in labels]
    describe = _naming_errors(describer, source, kept, images, names)
    if cache is None:
        texts, hits = (describe(list(range(len(kept)))) if kept else []), 0
    else:
        texts, hits = _describe_cached(describe, images, names, identity or describer_identity(describer.info()),
                                       cache)
    rows = [{"index": i, "label": l, "description": t} for i, l, t in zip(kept, labels, texts)]
    return rows, unreadable, hits


def run_describe(source, describer, out_path, indices: Sequence[int], batch_size: int = 64,
                 skip_bad: bool = False, cache=None) -> Dict:
    """skip_bad: an image that cannot be decoded is recorded in OUT.skipped.jsonl (index, error with
    the path) and left out, instead of stopping the run; it is then absent from pack's train split.
    cache: a DescriptionCache; images whose content (with this describer) is in it are not captioned."""
    out_path = Path(out_path)
    done, skipped = open_output(source, describer.info(), out_path)
    identity = describer_identity(describer.info())
    spath = skipped_path(out_path)
    done |= skipped
    todo = [i for i in indices if i not in done]
    cached = 0
    with whole_lines(out_path, spath), open(out_path, "a", encoding="utf-8") as f, \
            tqdm(total=len(indices), initial=len(indices) - len(todo), desc="describe", unit="img") as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            rows, unreadable, hits = describe_batch(source, describer, chunk, skip_bad, cache, identity)
            if unreadable:
                with open(spath, "a", encoding="utf-8") as sf:
                    sf.write("".join(skipped_line(r) for r in unreadable))
                skipped.update(r["index"] for r in unreadable)
            cached += hits
            f.write("".join(description_line(r) for r in rows))
            f.flush()
            bar.update(len(chunk))
    bad = len(skipped & set(indices))
    return {"written": len(todo) - len(skipped & set(todo)), "skipped": len(indices) - len(todo),
            "unreadable": bad, "cached": cached, "total": len(indices)}


def _image_name(source, i: int) -> str:
    path = getattr(source, "path", None)
    return f"image #{i} ({path(i)})" if path else f"image #{i} of {source.name}"


def _naming_errors(describer, source, batch: List[int], images: List, names: List[str]):
    """describe(positions in the batch) -> texts. When the backend fails on a batch, each image is
    tried alone so that the error names the image that fails (index and path); if none fails alone,
    the batch's error is raised with its index range."""
    backend = describer.info().get("backend", type(describer).__name__)

    def describe(positions: List[int]) -> List[str]:
        try:
            return describer.describe([images[p] for p in positions], [names[p] for p in positions])
        except Exception as e:  # any backend error: find and name the image
            if len(positions) > 1:
                for p in positions:
                    try:
                        describer.describe([images[p]], [names[p]])
                    except Exception as one:
                        raise ValueError(f"describer {backend!r} failed on {_image_name(source, batch[p])}: "
                                         f"{type(one).__name__}: {one}") from None
            what = _image_name(source, batch[positions[0]]) if len(positions) == 1 else \
                f"images #{batch[positions[0]]}..#{batch[positions[-1]]}"
            raise ValueError(f"describer {backend!r} failed on {what}: {type(e).__name__}: {e}") from None
    return describe


def _describe_cached(describe, images, names, identity, cache) -> Tuple[List[str], int]:
    """Looks every image up in the cache, captions only the misses (each distinct content once) and
    stores them. Returns the descriptions and the number of images not captioned."""
    keys = [image_key(identity, im, n) for im, n in zip(images, names)]
    found = cache.get_many(keys)
    first_miss = {}
    for pos, k in enumerate(keys):
        if k not in found:
            first_miss.setdefault(k, pos)
    if first_miss:
        positions = list(first_miss.values())
        new = describe(positions)
        fresh = dict(zip(first_miss, new))
        cache.put_many(fresh.items())
        found.update(fresh)
    return [found[k] for k in keys], len(keys) - len(first_miss)


def parse_shard(text: str):
    """'i/n' -> (i, n): this worker takes every n-th image starting at i (0 <= i < n). The messages
    follow argparse's 'argument --shard: ' (the command line's type)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"{text!r}: need 0 <= i < n")
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
    with atomic_path(out_path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    if metas and metas[0]:
        write_json_atomic(meta_path(out_path), metas[0])
    return {"parts": len(metas), "descriptions": len(rows), "out": str(out_path)}
