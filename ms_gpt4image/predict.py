"""`python -m ms_gpt4image predict`: the deployed model on images.

Model: OUT.mindir (run through `mindspore.load` + `nn.GraphCell`, as a deployment would) or the
deployable OUT.ckpt, each with OUT.model.json beside it (written by `export`); or any training or
deployable checkpoint with `-c CONFIG` (the spec then comes from the config and its manifest).
Inputs: image files, folders (recursive, image extensions only), or the eval split of a packed
directory (`--data-dir`, rows in evaluate's order, each with its index and label).
Preprocessing: `data.image_ops(spec, train=False)`, the very ops `evaluate` maps over MindRecord, run
here on one image at a time so that a file that cannot be decoded is named.
Output: top-k classes with softmax probabilities, as a table on stdout and, with `--out`, JSONL or
CSV (by extension), written to a temporary name and renamed when every image is done.
"""
import contextlib
import csv
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

# a corrupt file is reported once, by our error; keep MindSpore's bundled OpenCV from warning first
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
import mindspore as ms  # noqa: E402
import mindspore.dataset as ds  # noqa: E402
import mindspore.dataset.transforms as transforms  # noqa: E402
import mindspore.dataset.vision as vision  # noqa: E402
import mindspore.nn as nn  # noqa: E402

from .data import image_ops, load_manifest, split_files
from .deploy import PREPROCESS_KEYS, build_backbone_from_spec, model_spec, model_spec_path
from .engine import pad_rows, topk_indices
from .files import atomic_path

# the same list as export/readers.py's IMG_EXTENSIONS (the halves do not import each other; a test
# keeps the two equal)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class BadImage(ValueError):
    pass


# ------------------------------------------------------------------------------------------------
# model

def load_model(model_path, cfg: Optional[Dict] = None, weights: str = "auto") -> Tuple[nn.Cell, Dict]:
    """(net: images -> logits, spec). The spec is OUT.model.json beside the model, or from `cfg`."""
    model_path = Path(model_path)
    if model_path.suffix not in (".mindir", ".ckpt"):
        raise ValueError(f"{model_path}: --model takes a .mindir or a .ckpt file")
    if not model_path.is_file():
        raise FileNotFoundError(f"model not found: {model_path}")
    if cfg is not None:
        spec = model_spec(cfg, load_manifest(cfg["data_dir"]))
    else:
        spec_path = model_spec_path(model_path)
        if not spec_path.exists():
            raise FileNotFoundError(f"{spec_path}: missing; `export` writes it beside OUT.mindir and OUT.ckpt "
                                    f"(for a training checkpoint pass -c CONFIG)")
        try:
            spec = json.loads(spec_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{spec_path}: not valid JSON ({e})") from None
        missing = [k for k in ("model", "num_classes", "class_names", *PREPROCESS_KEYS) if k not in spec]
        if missing:
            raise ValueError(f"{spec_path}: no {missing} (written by another version of export?)")
    if model_path.suffix == ".mindir":
        try:
            net = nn.GraphCell(ms.load(str(model_path)))
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"{model_path}: cannot load as MindIR ({str(e).splitlines()[0][:200]})") from None
    else:
        net = build_backbone_from_spec(spec, model_path, weights)
    return net, spec


# ------------------------------------------------------------------------------------------------
# inputs

def list_images(paths: Sequence) -> List[Path]:
    """Files as given (any extension: the user named them); folders recursively, image extensions
    only, sorted. Linked folders are followed, each real folder once (real folders before links to
    them, and no link cycle)."""
    out = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            seen = set()
            found = []
            for dirpath, dirnames, files in os.walk(p, followlinks=True):
                real = os.path.realpath(dirpath)
                if real in seen:
                    dirnames[:] = []
                    continue
                seen.add(real)
                dirnames.sort(key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d))
                found += [Path(dirpath) / f for f in files if f.lower().endswith(IMG_EXTENSIONS)]
            if not found:
                raise ValueError(f"{p}: no images (extensions {', '.join(IMG_EXTENSIONS)})")
            out += sorted(found)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


def file_items(paths: Sequence[Path]) -> Iterator[Tuple[Dict, Optional[bytes], str]]:
    """(row key, encoded bytes or None, name for errors) per file."""
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError as e:
            yield {"path": str(p)}, None, f"{p}: cannot read ({e.strerror})"
            continue
        yield {"path": str(p)}, data, str(p)


def packed_items(data_dir, class_names: List[str]) -> Tuple[int, Iterator[Tuple[Dict, bytes, str]]]:
    """The eval split of a packed directory in evaluate's order: (count, items with index and label)."""
    manifest = load_manifest(data_dir)
    if manifest["num_classes"] != len(class_names):
        raise ValueError(f"{data_dir}: {manifest['num_classes']} classes but the model has {len(class_names)}")
    data = ds.MindDataset(split_files(data_dir, manifest, "eval"), columns_list=["index", "label", "image"],
                          shuffle=False, num_parallel_workers=1)

    def items():
        for row in data.create_dict_iterator(num_epochs=1, output_numpy=True):
            i, y = int(row["index"]), int(row["label"])
            yield {"index": i, "label": y, "label_name": class_names[y]}, row["image"].tobytes(), f"{data_dir} eval index {i}"
    return data.get_dataset_size(), items()


# formats mindspore.dataset.vision.Decode reads, by their first bytes: JPEG, PNG, BMP, TIFF (LE, BE)
_MINDSPORE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*")


class Preprocess:
    """Encoded image -> CHW float32, through evaluate's ops. JPEG, PNG, BMP and TIFF go to MindSpore's
    Decode as in training; other formats PIL reads (WebP, GIF, PPM) are decoded by PIL and go through
    the same remaining ops. (MindSpore's Decode also writes any format it does not read into the
    working directory as unsupported_image.*, so it is never handed one.)"""

    def __init__(self, spec: Dict):
        ops = image_ops(spec, train=False)
        if not isinstance(ops[0], vision.Decode):
            raise TypeError("eval ops must start with vision.Decode")
        self.decode, self.rest = ops[0], transforms.Compose(ops[1:])

    def __call__(self, data: bytes, name: str) -> np.ndarray:
        image = None
        if data.startswith(_MINDSPORE_MAGIC):
            try:
                image = self.decode(np.frombuffer(data, dtype=np.uint8))
            except RuntimeError:  # a corrupt file: MindSpore's message says nothing, PIL's names the problem
                pass
        if image is None:
            try:
                with Image.open(io.BytesIO(data)) as img:
                    image = np.asarray(img.convert("RGB"))
            except UnidentifiedImageError:
                raise BadImage(f"{name}: not an image format MindSpore or PIL can read") from None
            except Exception as e:  # PIL raises several types for corrupt files
                raise BadImage(f"{name}: cannot decode image ({e})") from None
        try:
            return self.rest(image)
        except RuntimeError as e:
            raise BadImage(f"{name}: preprocessing failed ({str(e).splitlines()[0][:200]})") from None


# ------------------------------------------------------------------------------------------------
# outputs

def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class RowWriter:
    """Prediction rows as JSONL or CSV (`fmt`, from the extension of --out)."""

    def __init__(self, f, fmt: str, key_fields: List[str], k: int):
        self.f, self.fmt, self.key_fields = f, fmt, key_fields
        if fmt == "csv":
            self.csv = csv.writer(f)
            self.csv.writerow(key_fields + [f"{c}_{r}" for r in range(1, k + 1) for c in ("class", "name", "prob")])

    def write(self, row: Dict) -> None:
        if self.fmt == "jsonl":
            self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            self.csv.writerow([row[k] for k in self.key_fields] +
                              [v for t in row["topk"] for v in (t["class"], t["name"], f"{t['prob']:.6f}")])


def output_format(path) -> str:
    ext = Path(path).suffix.lower()
    if ext not in (".jsonl", ".csv"):
        raise ValueError(f"--out {path}: use a .jsonl or .csv file name")
    return ext[1:]


def table_line(row: Dict, width: int) -> str:
    name = row["path"] if "path" in row else f"#{row['index']} ({row['label_name']})"
    if len(name) > width:
        name = "..." + name[-(width - 3):]
    return f"{name:<{width}}  " + "  ".join(f"{t['name']} {t['prob']:.3f}" for t in row["topk"])


# ------------------------------------------------------------------------------------------------

def run_predict(net: nn.Cell, spec: Dict, paths: Sequence = (), data_dir=None, topk: int = 5,
                batch_size: int = 64, out=None, skip_bad: bool = False, stdout=sys.stdout) -> Dict:
    if bool(paths) == bool(data_dir):
        raise ValueError("give image files/folders or --data-dir (the eval split of a packed directory), not both")
    if topk < 1 or batch_size < 1:
        raise ValueError("--topk and --batch-size must be >= 1")
    fmt = output_format(out) if out else None
    names = spec["class_names"]
    k = min(topk, len(names))
    if data_dir:
        total, items = packed_items(data_dir, names)
        key_fields, width = ["index", "label", "label_name"], 32
    else:
        files = list_images(paths)
        total, items = len(files), file_items(files)
        key_fields, width = ["path"], min(60, max(len(str(p)) for p in files))
    print(f"{'image':<{width}}  top-{k} (class probability)", file=stdout)
    # on a terminal, tqdm.write keeps table lines and the progress bar (stderr) apart; into a file or a
    # pipe it would only fill stderr with bar redraws
    emit = (lambda line: tqdm.write(line, file=stdout)) if stdout.isatty() else (lambda line: print(line, file=stdout))
    preprocess = Preprocess(spec)
    # every batch reaches the net with one shape (graph mode compiles one graph): a short batch (the
    # last, or one with skipped images) is padded with repeats and the padding's rows are dropped
    rows = min(batch_size, total)
    skipped, rows_done, correct1, correctk = [], 0, 0, 0
    t0 = time.time()
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    with (atomic_path(out) if out else contextlib.nullcontext()) as tmp, \
            (open(tmp, "w", newline="", encoding="utf-8") if tmp else contextlib.nullcontext()) as f:
        writer = RowWriter(f, fmt, key_fields, k) if f else None

        def flush(keys, arrays):
            nonlocal rows_done, correct1, correctk
            logits = net(ms.Tensor(pad_rows(np.stack(arrays), rows))).asnumpy()[:len(keys)]
            probs, top = softmax(logits), topk_indices(logits, k)
            for key, p, t in zip(keys, probs, top):
                row = {**key, "topk": [{"class": int(c), "name": names[c], "prob": float(p[c])} for c in t]}
                if writer:
                    writer.write(row)
                emit(table_line(row, width))
                if "label" in key:
                    correct1 += int(t[0] == key["label"])
                    correctk += int(key["label"] in t)
            rows_done += len(keys)

        keys, arrays = [], []
        for key, data, name in tqdm(items, total=total, desc="predict", unit="img", file=sys.stderr):
            try:
                if data is None:
                    raise BadImage(name)
                arrays.append(preprocess(data, name))
                keys.append(key)
            except BadImage as e:
                if not skip_bad:
                    raise BadImage(f"{e} (pass --skip-bad to skip such images)") from None
                skipped.append({**key, "error": str(e)})
            if len(arrays) == batch_size:
                flush(keys, arrays)
                keys, arrays = [], []
        if arrays:
            flush(keys, arrays)
        if rows_done == 0:  # raised inside the block: no empty output file is left under --out
            raise ValueError("no image could be read" + (f": {len(skipped)} skipped, the first: {skipped[0]['error']}"
                                                          if skipped else ""))
    result = {"images": rows_done, "skipped": len(skipped), "seconds": round(time.time() - t0, 3)}
    if out:
        result["out"] = str(out)
    if skipped:
        skip_path = Path(f"{out}.skipped.jsonl") if out else None
        if skip_path:
            with atomic_path(skip_path) as tmp:
                tmp.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in skipped), encoding="utf-8")
            result["skipped_list"] = str(skip_path)
        else:
            result["skipped_images"] = skipped
    if data_dir:
        result.update({"top1": 100.0 * correct1 / rows_done, f"top{k}": 100.0 * correctk / rows_done})  # k may be 1
    return result

