"""Image sources in a canonical order: index i here is index i in every file derived from them.

A source exposes `name`, `class_names`, `__len__`, `label(i)`, `image(i)` (a PIL image) and
`encoded(i)` (the bytes stored in MindRecord: original file bytes, or lossless PNG for raw arrays).
"""
import gzip
import io
import os
import struct
from pathlib import Path
from typing import List, Optional

import numpy as np
from PIL import Image

FASHION_MNIST_CLASSES = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot"]
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MINDSPORE_DECODES = ("JPEG", "PNG", "BMP", "TIFF")  # PIL format names that mindspore.dataset.vision.Decode reads


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def read_idx(path) -> np.ndarray:
    """Reads an idx file (MNIST format), gzipped or not."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"idx file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short to be an idx file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {data[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {body.size} bytes")
    return body.reshape(dims)


class ArraySource:
    """Images held as a uint8 array ([N, H, W] grey or [N, H, W, 3] RGB) with integer labels;
    stored in MindRecord as lossless PNG."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])  # mode L or RGB from the array's shape

    def encoded(self, i: int) -> bytes:
        return _png_bytes(self.images[i])


class IdxSource(ArraySource):
    """MNIST-format image/label idx pair (Fashion-MNIST by default)."""

    def __init__(self, images_path, labels_path, class_names: List[str], name: str):
        self.images = read_idx(images_path)
        self.labels = read_idx(labels_path).astype(np.int64)
        if self.images.ndim != 3 or self.labels.ndim != 1 or len(self.images) != len(self.labels):
            raise ValueError(f"{images_path} / {labels_path}: shapes {self.images.shape} and "
                             f"{self.labels.shape} do not form an image/label pair")
        if self.labels.max(initial=0) >= len(class_names):
            raise ValueError(f"{labels_path}: label {self.labels.max()} out of range for {len(class_names)} classes")
        self.class_names = class_names
        self.name = name


class ImageFolderSource:
    """`root/<class>/<file>` in torchvision ImageFolder order: classes sorted, files sorted per class.

    A class folder without images would still take a label and a classifier output that no image
    trains; like torchvision's ImageFolder, that is refused unless `allow_empty` (then the class
    keeps its label index, e.g. to match another split's class list)."""

    def __init__(self, root, name: Optional[str] = None, allow_empty: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        self.class_names = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not self.class_names:
            raise ValueError(f"{root}: no class sub-folders")
        self.samples = []
        empty = []
        for label, cls in enumerate(self.class_names):
            n = len(self.samples)
            for dirpath, _, files in sorted(os.walk(root / cls, followlinks=True)):
                for fname in sorted(files):
                    if fname.lower().endswith(IMG_EXTENSIONS):
                        self.samples.append((os.path.join(dirpath, fname), label))
            if len(self.samples) == n:
                empty.append(cls)
        if not self.samples:
            raise ValueError(f"{root}: no images with extensions {IMG_EXTENSIONS}")
        if empty and not allow_empty:
            shown = ", ".join(repr(c) for c in empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
            raise ValueError(f"{root}: {len(empty)} class folder(s) hold no images ({shown}); remove them, or pass "
                             f"--allow-empty-classes to keep them as classes without training images")
        self.name = name or root.name

    def __len__(self):
        return len(self.samples)

    def label(self, i: int) -> int:
        return self.samples[i][1]

    def path(self, i: int) -> str:
        return self.samples[i][0]

    def image(self, i: int) -> Image.Image:
        path = self.samples[i][0]
        try:
            img = Image.open(path)
            img.load()
        except Exception as e:  # PIL raises several types for corrupt files
            raise ValueError(f"cannot decode image #{i}: {path} ({e})") from None
        return img.convert("RGB")

    def encoded(self, i: int) -> bytes:
        """The file's own bytes when MindSpore's Decode reads the format; other formats PIL reads
        (WebP, GIF, ...) are stored as lossless PNG, so training never meets an undecodable image.
        The file is read once and decoded here as a check: a bad image fails now, with its path,
        rather than at training time."""
        path = self.samples[i][0]
        try:
            with open(path, "rb") as f:
                data = f.read()
            img = Image.open(io.BytesIO(data))
            if img.format == "JPEG":
                # libjpeg's 1/8-scale decode still reads every coded byte (a truncated file or a broken
                # Huffman stream fails as in a full decode) at a fraction of the cost (scripts/bench_pack.py)
                img.draft(None, (1, 1))
            img.load()
        except Image.UnidentifiedImageError:  # its message names the in-memory buffer, not the file
            raise ValueError(f"cannot decode image #{i}: {path} (empty, or not an image format PIL reads)") from None
        except Exception as e:  # PIL raises several types for corrupt files
            raise ValueError(f"cannot decode image #{i}: {path} ({e})") from None
        if img.format in MINDSPORE_DECODES:
            return data
        return _png_bytes(np.asarray(img.convert("RGB")))


class CifarSource(ArraySource):
    """CIFAR-10 / CIFAR-100 in the official python pickle format (`cifar-10-batches-py/`:
    data_batch_1..5, test_batch, batches.meta; `cifar-100-python/`: train, test, meta, fine labels)."""

    def __init__(self, root, split: str = "train", kind: str = "cifar10"):
        import pickle
        root = Path(root)
        sub = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[kind]
        if (root / sub).is_dir():
            root = root / sub
        train = split == "train"
        if kind == "cifar10":
            files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
            meta, label_key, names_key = "batches.meta", b"labels", b"label_names"
        else:
            files = ["train"] if train else ["test"]
            meta, label_key, names_key = "meta", b"fine_labels", b"fine_label_names"
        images, labels = [], []
        for name in files + [meta]:
            path = root / name
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing (expected the official {sub} layout)")
            with open(path, "rb") as f:
                try:
                    d = pickle.load(f, encoding="bytes")
                except Exception as e:
                    raise ValueError(f"{path}: not a CIFAR pickle ({e})") from None
            if name == meta:
                self.class_names = [n.decode() for n in d[names_key]]
                continue
            if b"data" not in d or label_key not in d:
                raise ValueError(f"{path}: no {b'data'!r} / {label_key!r} entries")
            images.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(d[label_key])
        self.images = np.concatenate(images)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.name = kind


SOURCES = ("fashion-mnist", "idx", "imagefolder", "cifar10", "cifar100")


def open_source(kind: str, root: Optional[str] = None, split: str = "train", class_names: Optional[List[str]] = None,
                allow_empty_classes: bool = False):
    """Opens a source by kind. `split` is train|test for idx sources; ImageFolder takes `root/split`
    when that folder exists, else `root` itself (`allow_empty_classes`: see ImageFolderSource)."""
    if kind in ("fashion-mnist", "idx"):
        root = Path(root or FASHION_MNIST_ROOT)
        prefix = {"train": "train", "test": "t10k", "eval": "t10k", "val": "t10k"}.get(split)
        if prefix is None:
            raise ValueError(f"unknown split {split!r} for an idx source (train|test)")
        def find(stem):
            for cand in (root / f"{stem}.gz", root / stem):
                if cand.exists():
                    return cand
            raise FileNotFoundError(f"{root}: no {stem}[.gz]" + (
                " (install the Debian package dataset-fashion-mnist)" if kind == "fashion-mnist" else ""))
        names = class_names or (FASHION_MNIST_CLASSES if kind == "fashion-mnist" else [str(c) for c in range(10)])
        return IdxSource(find(f"{prefix}-images-idx3-ubyte"), find(f"{prefix}-labels-idx1-ubyte"), names,
                         name=kind if kind == "fashion-mnist" else root.name)
    if kind in ("cifar10", "cifar100"):
        if root is None:
            raise ValueError(f"--root is required for a {kind} source")
        if split not in ("train", "test", "eval", "val"):
            raise ValueError(f"unknown split {split!r} for {kind} (train|test)")
        return CifarSource(root, "train" if split == "train" else "test", kind)
    if kind == "imagefolder":
        if root is None:
            raise ValueError("--root is required for an imagefolder source")
        sub = Path(root) / split
        return ImageFolderSource(sub if sub.is_dir() else root, name=Path(root).name, allow_empty=allow_empty_classes)
    raise ValueError(f"unknown source {kind!r}; choose one of {SOURCES}")
