"""MindRecord -> mindspore.dataset pipelines (the contract is in DESIGN.md and export/pack.py)."""
import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import mindspore.dataset as ds
import mindspore.dataset.vision as vision


def load_manifest(data_dir) -> Dict:
    path = Path(data_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest; point data_dir at a directory written by `python -m export pack`")
    return json.loads(path.read_text())


def split_files(data_dir, manifest: Dict, split: str):
    files = [str(Path(data_dir) / f["name"]) for f in manifest["splits"][split]["files"]]
    for f in files:
        if not Path(f).exists():
            raise FileNotFoundError(f"{f}: listed in {data_dir}/manifest.json but missing")
    return files


def _image_ops(cfg: Dict, train: bool):
    size = cfg["image_size"]
    ops = [vision.Decode()]  # RGB; a grey PNG becomes three equal channels
    if train:
        if cfg["crop_padding"]:
            ops.append(vision.RandomCrop(size, padding=cfg["crop_padding"]))
        if cfg["hflip"]:
            ops.append(vision.RandomHorizontalFlip())
    ops += [vision.Resize((size, size)),
            vision.Rescale(1.0 / 255.0, 0.0),
            vision.Normalize(mean=cfg["mean"], std=cfg["std"]),
            vision.HWC2CHW()]
    return ops


def create_dataset(cfg: Dict, split: str, epoch_seed: Optional[int] = None,
                   num_shards: Optional[int] = None, shard_id: Optional[int] = None) -> Tuple[ds.Dataset, int]:
    """Returns (batched dataset, number of samples read). Train yields (image, label, text_emb);
    eval yields (image, label). `epoch_seed` fixes the shuffle so a resumed run sees the same order."""
    manifest = load_manifest(cfg["data_dir"])
    train = split == "train"
    columns = ["image", "label", "text_emb"] if train else ["image", "label"]
    if epoch_seed is not None:
        ds.config.set_seed(epoch_seed)
    kwargs = dict(columns_list=columns, shuffle=train, num_parallel_workers=1)
    if num_shards:
        kwargs.update(num_shards=num_shards, shard_id=shard_id)
    data = ds.MindDataset(split_files(cfg["data_dir"], manifest, split), **kwargs)
    n = data.get_dataset_size()
    data = data.map(_image_ops(cfg, train), input_columns="image", num_parallel_workers=cfg["num_parallel_workers"])
    batch = cfg["batch_size"] if train else cfg["eval_batch_size"]
    # train drops the ragged last batch (one static graph); eval keeps every sample
    data = data.batch(batch, drop_remainder=train)
    return data, n
