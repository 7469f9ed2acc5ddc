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


def numbered_lines(path) -> Iterator[Tuple[int, int, bytes]]:
    """(line number from 1, byte offset, bytes) of each line, streamed: description files of ImageNet are large."""
    with open(path, "rb") as f:
        pos = 0
        for n, line in enumerate(f, 1):
            yield n, pos, line
            pos += len(line)


def decode_line(path, n: int, line: bytes) -> str:
    """Line n of `path` as text. Decoded line by line (not by the file object) so that a byte that is not
    UTF-8 is reported with its file and line, as a line that is not JSON is."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{n}: not valid UTF-8 ({e})") from None
    return text.removeprefix("\ufeff") if n == 1 else text  # a byte-order mark (some editors write one) is no data


def text_lines(path) -> Iterator[str]:
    """Each line's text (for csv), undecodable bytes reported with their line (decode_line)."""
    for n, _, line in numbered_lines(path):
        yield decode_line(path, n, line)


def _record(path, n: int, line: bytes) -> Dict:
    text = decode_line(path, n, line)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
    if not isinstance(record, dict):  # `3`, a list: valid JSON, but no record's fields to read
        raise ValueError(f"{path}:{n}: a JSON {type(record).__name__}, not an object with a record's fields")
    return record


def jsonl_records(path) -> Iterator[Tuple[int, int, Dict]]:
    """(line number, byte offset, record) of each non-blank line: the one reader of descriptions files (and
    of the other JSONL files). A torn last line (an interrupted write, possibly cut inside a character) is
    ignored; any other line that is not UTF-8 JSON is an error naming the file and the line."""
    path = Path(path)
    for n, start, line in numbered_lines(path):
        if not line.strip():
            continue
        try:
            record = _record(path, n, line)
        except ValueError:
            if not line.endswith(b"\n"):  # only the last line can lack it
                return  # torn tail from an interrupted run: resume will rewrite it
            raise
        yield n, start, record


def read_jsonl(path) -> Iterator[Dict]:
    """Yields the records of jsonl_records."""
    for _, _, record in jsonl_records(path):
        yield record


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
