"""`describe --engine ray`: the one-process describe, spread over a Ray cluster (ray_engine.py).

Blocks are index ranges of the canonical order, `block_size` images each (whole batches, so every batch
holds the images it holds in one process: same texts). A worker describes a block with describe_batch
(the one-process path's code) and the driver writes the block's rows to OUT.parts/<start>-<stop>.json
as it arrives; when every block is there, OUT is OUT's earlier lines (a resumed run) followed by the
blocks in index order: byte for byte what one process writes. OUT.meta.json and OUT.skipped.jsonl are
the one-process path's too.

Description cache: workers only read the SQLite file (read-only connections) and send back what they
captioned; the driver, the one writer, stores it as each block arrives. So several workers never contend
for SQLite's write lock, and a worker on a host that does not see the file just captions everything.
"""
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

from tqdm import tqdm

from .desc_cache import DescriptionCache, describer_identity, open_cache
from .describe import description_line, describe_batch, open_output, skipped_line, skipped_path
from .describers import create_describer, describer_info, load_plugins
from .io_utils import atomic_path, read_jsonl, write_json_atomic
from .ray_engine import BlockWorker, RayOptions, cluster, import_ray, run_blocks


def parts_dir(out_path) -> Path:
    return Path(f"{out_path}.parts")


def block_key(block: Sequence[int]) -> str:
    """The part's name: the index range [first, last + 1) it covers."""
    return f"{block[0]:09d}-{block[-1] + 1:09d}"


class WorkerCache:
    """A worker's view of the description cache for one block: reads the file (`reader`: None when this
    host does not see it), keeps the new entries for the driver to store."""

    def __init__(self, reader: Optional[DescriptionCache]):
        self.reader = reader
        self.new: Dict[str, str] = {}

    def get_many(self, keys: List[str]) -> Dict[str, str]:
        return self.reader.get_many(keys) if self.reader else {}

    def put_many(self, items) -> None:
        self.new.update(items)


class DescribeWorker(BlockWorker):
    def setup(self, source, backend: str, describer_kwargs: Dict, plugins: List[str], batch_size: int,
              skip_bad: bool, cache_path: Optional[str]):
        load_plugins(plugins)
        self.describer = create_describer(backend, **describer_kwargs)
        self.identity = describer_identity(self.describer.info())
        self.source, self.batch_size, self.skip_bad = source, batch_size, skip_bad
        self.use_cache = cache_path is not None
        self.cache_reader = DescriptionCache.read_only(cache_path) if self.use_cache else None

    def process(self, block: Dict) -> Dict:
        cache = WorkerCache(self.cache_reader) if self.use_cache else None
        todo, rows, unreadable, cached = block["todo"], [], [], 0
        for start in range(0, len(todo), self.batch_size):
            r, u, hits = describe_batch(self.source, self.describer, todo[start:start + self.batch_size],
                                        self.skip_bad, cache, self.identity)
            rows += r
            unreadable += u
            cached += hits
        return {"rows": rows, "unreadable": unreadable, "cached": cached,
                "new_cache": cache.new if cache else {}}


def run_describe_ray(source, backend: str, describer_kwargs: Dict, plugins: List[str], out_path,
                     indices: Sequence[int], batch_size: int, block_size: int, skip_bad: bool,
                     cache_path: Optional[str], opts: RayOptions) -> Dict:
    if block_size % batch_size:
        raise ValueError(f"--block-size {block_size} must be a multiple of --batch-size {batch_size} "
                         f"(a block is described in whole batches, as one process does)")
    import_ray()  # without Ray: one line saying what to install, before anything is written
    out_path = Path(out_path)
    info = describer_info(backend, **describer_kwargs)  # transformers backends: no model on the driver
    done, skipped = open_output(source, info, out_path)
    parts = parts_dir(out_path)
    state = {"source": source.name, "count": len(source), "describer": info, "block_size": block_size,
             "batch_size": batch_size}
    if parts.exists() and _read_json(parts / "state.json") != state:
        print(f"describe: {parts} was made for another source, describer or block size; starting over", file=sys.stderr)
        shutil.rmtree(parts)

    blocks = {block_key(b): b for b in (list(indices[p:p + block_size]) for p in range(0, len(indices), block_size))}
    kept = [k for k in blocks if (parts / f"{k}.json").exists()]
    finished = done | skipped
    todo = [{"key": k, "todo": [i for i in b if i not in finished]} for k, b in blocks.items() if k not in kept]
    todo = [b for b in todo if b["todo"]]  # a block already in OUT (an earlier run) needs no work
    stats = {"written": 0, "skipped": len(indices) - sum(len(b["todo"]) for b in todo), "unreadable": 0,
             "cached": 0, "total": len(indices), "engine": "ray", "blocks": len(blocks), "blocks_kept": len(kept),
             "blocks_described": len(todo), "workers": 0}
    if todo:
        with cluster(opts) as ray:  # joined before anything is written: a wrong address leaves no part
            parts.mkdir(exist_ok=True)
            write_json_atomic(parts / "state.json", state)
            cache = open_cache(cache_path)
            with tqdm(total=len(indices), initial=stats["skipped"], desc="describe", unit="img") as bar:
                def on_result(key: str, result: Dict) -> None:
                    write_json_atomic(parts / f"{key}.json", {"rows": result["rows"],
                                                              "unreadable": result["unreadable"]})
                    if cache is not None and result["new_cache"]:
                        cache.put_many(result["new_cache"].items())
                    stats["written"] += len(result["rows"])
                    stats["cached"] += result["cached"]
                    bar.update(len(result["rows"]) + len(result["unreadable"]))

                worker_kwargs = dict(source=source, backend=backend, describer_kwargs=describer_kwargs,
                                     plugins=plugins, batch_size=batch_size, skip_bad=skip_bad,
                                     cache_path=str(Path(cache.path).resolve()) if cache is not None else None)
                stats["workers"] = run_blocks(ray, todo, DescribeWorker, worker_kwargs, opts, on_result,
                                              Path(f"{out_path}.ray_test_actors"))
    if kept or todo:
        _assemble(out_path, [parts / f"{k}.json" for k in blocks], finished)
    shutil.rmtree(parts, ignore_errors=True)
    spath = skipped_path(out_path)
    wanted = set(indices)
    stats["unreadable"] = sum(r["index"] in wanted for r in read_jsonl(spath)) if spath.exists() else 0
    return stats


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _assemble(out_path: Path, part_files: List[Path], already: Set[int]) -> None:
    """OUT := its lines so far + each part's rows in index order (OUT.skipped.jsonl likewise), written to a
    temporary file and renamed: a driver killed here leaves OUT whole and the parts in place. Rows whose
    index OUT or OUT.skipped.jsonl already held (`already`: an assembly cut short) are not added twice."""
    unreadable = []
    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        if out_path.exists():
            with open(out_path, "r", encoding="utf-8") as old:
                shutil.copyfileobj(old, f)
        for part in part_files:
            if part.exists():
                p = json.loads(part.read_text(encoding="utf-8"))
                f.write("".join(description_line(r) for r in p["rows"] if r["index"] not in already))
                unreadable += [r for r in p["unreadable"] if r["index"] not in already]
    if unreadable:  # as in one process, OUT.skipped.jsonl exists only once an image was unreadable
        spath = skipped_path(out_path)
        with atomic_path(spath) as tmp, open(tmp, "w", encoding="utf-8") as f:
            if spath.exists():
                with open(spath, "r", encoding="utf-8") as old:
                    shutil.copyfileobj(old, f)
            f.write("".join(skipped_line(r) for r in unreadable))
