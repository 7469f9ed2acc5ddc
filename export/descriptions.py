"""A descriptions JSONL file ({index, label, description} per line) read without holding it in memory.

One pass records, per image, its index, label and the byte offset of its line (24 bytes an image:
about 30 MB for ImageNet-1K, instead of gigabytes of Python dicts); texts are read back on demand.
Rows are in ascending index order; when an index appears twice, the later line wins (as after a
resumed run that re-described it).
"""
import json
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np

from .io_utils import jsonl_records


class DescriptionSet:
    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"descriptions file not found: {self.path}")
        index, label, offset = [], [], []
        for n, start, r in jsonl_records(self.path):
            for key in ("index", "label", "description"):
                if key not in r:
                    raise ValueError(f"{self.path}:{n}: record has no {key!r}")
            if not isinstance(r["description"], str):
                raise ValueError(f"{self.path}:{n} (index {r['index']}): description is not a string")
            index.append(int(r["index"]))
            label.append(int(r["label"]))
            offset.append(start)
        if not index:
            raise ValueError(f"{self.path}: no descriptions")
        index = np.asarray(index, dtype=np.int64)
        # stable sort, then keep the last line of each index
        order = np.argsort(index, kind="stable")
        sorted_index = index[order]
        last = np.r_[sorted_index[1:] != sorted_index[:-1], True]
        keep = order[last]
        self.indices = index[keep]
        self.labels = np.asarray(label, dtype=np.int64)[keep]
        self.offsets = np.asarray(offset, dtype=np.int64)[keep]

    def __len__(self) -> int:
        return len(self.indices)

    def _read(self, f, pos: int) -> Dict:
        f.seek(int(self.offsets[pos]))
        return json.loads(f.readline())

    def texts(self, start: int, stop: int) -> List[str]:
        """Descriptions of rows [start, stop) in index order."""
        with open(self.path, "rb") as f:
            return [self._read(f, p)["description"] for p in range(start, min(stop, len(self)))]

    def records(self) -> Iterator[Dict]:
        """Every record, in ascending index order (sequential reads when the file is sorted)."""
        with open(self.path, "rb") as f:
            for p in range(len(self)):
                yield self._read(f, p)
