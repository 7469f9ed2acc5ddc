"""Small file helpers shared by the offline commands: atomic writes, JSONL, hashing."""
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterator, Tuple

import numpy as np

from ms_gpt4image.files import atomic_path  # one definition for both halves (no mindspore import)


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def save_npy_atomic(path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save adds no .npy to the name
        np.save(f, arr)


@contextlib.contextmanager
def npy_writer(path, shape: Tuple[int, ...]):
    """A float32 .npy memmap filled in place (bounded memory), renamed to `path` only when the block
    finishes; on any error or interruption the temporary file is removed and nothing appears under `path`."""
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        try:
            yield out
            out.flush()
        finally:
            del out  # closes the memmap before the rename or removal


def read_jsonl(path) -> Iterator[Dict]:
    """Yields records; a torn last line (an interrupted write) is ignored, any other bad line is an error."""
    path = Path(path)
    with open(path, "r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):  # streamed: description files of ImageNet are large
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                if not line.endswith("\n"):  # only the last line can lack it
                    return  # torn tail from an interrupted run: resume will rewrite it
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None


def truncate_torn_tail(path) -> None:
    """Drops a final line without newline so that appending resumes on a clean line boundary
    (reads backwards from the end: the file may be large)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            step = min(pos, 1 << 16)
            f.seek(pos - step)
            block = f.read(step)
            if pos == end and block.endswith(b"\n"):
                return
            cut = block.rfind(b"\n")
            if cut >= 0:
                f.truncate(pos - step + cut + 1)
                return
            pos -= step
        f.truncate(0)


@contextlib.contextmanager
def whole_lines(*paths):
    """On an error or an interruption inside the block, cuts a half-written last line off each file
    (a write interrupted mid-way), so the files hold whole lines only."""
    try:
        yield
    except BaseException:
        for path in paths:
            truncate_torn_tail(path)
        raise
