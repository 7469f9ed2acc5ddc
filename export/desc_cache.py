"""A description cache keyed by image content, so an unchanged image is never captioned twice.

Key = sha256(describer identity, image mode, size, pixels): the identity is the describer's `info()`
(backend, model, prompt, template, generation length), so another prompt or model is a miss. The
pixels are hashed after decoding, so re-encoding a file or moving it to another folder still hits;
duplicate images inside a dataset (ImageNet has some) are captioned once. SQLite (standard library)
keeps the store on disk, safe for several `describe --shard` processes on one host. With `--engine ray`
the workers only read it and the driver writes what they captioned (one writer, no lock contention).
"""
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from PIL import Image


def describer_identity(info: Dict) -> str:
    return json.dumps(info, sort_keys=True, default=str)


def image_key(identity: str, img: Image.Image, class_name: str) -> str:
    h = hashlib.sha256(identity.encode())
    h.update(f"|{img.mode}|{img.size}|{class_name}|".encode())  # class-aware prompts depend on the label
    h.update(img.tobytes())
    return h.hexdigest()


class DescriptionCache:
    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=60)
            self.db.execute("CREATE TABLE IF NOT EXISTS descriptions (key TEXT PRIMARY KEY, description TEXT NOT NULL)")
            self.db.commit()
        except sqlite3.DatabaseError as e:
            raise ValueError(f"description cache {self.path} is not a usable SQLite file ({e}); "
                             f"delete it or pass another --cache") from None

    @classmethod
    def read_only(cls, path) -> Optional["DescriptionCache"]:
        """A reader of the cache at `path`, or None when there is none (a Ray worker on a host that does
        not see the driver's file). Readers never write: the Ray engine's driver is the only writer."""
        self = cls.__new__(cls)
        self.path = Path(path)
        if not self.path.is_file():
            return None
        # a Ray actor opens it in its constructor and reads in the thread that runs its calls (one at a time)
        self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60,
                                  check_same_thread=False)
        return self

    def get_many(self, keys: List[str]) -> Dict[str, str]:
        found = {}
        for start in range(0, len(keys), 500):  # SQLite's limit on bound parameters
            part = keys[start:start + 500]
            rows = self.db.execute(f"SELECT key, description FROM descriptions WHERE key IN "
                                   f"({','.join('?' * len(part))})", part)
            found.update(rows)
        return found

    def put_many(self, items: Iterable[Tuple[str, str]]) -> None:
        with self.db:  # one transaction per batch
            self.db.executemany("INSERT OR REPLACE INTO descriptions VALUES (?, ?)", list(items))

    def __len__(self):
        return self.db.execute("SELECT COUNT(*) FROM descriptions").fetchone()[0]

    def close(self):
        self.db.close()


def open_cache(path: Optional[str]) -> Optional[DescriptionCache]:
    return None if path in (None, "", "none") else DescriptionCache(path)
