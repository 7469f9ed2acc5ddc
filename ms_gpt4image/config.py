"""Run configuration: YAML files over defaults, close to mindcv's keys plus an `align` block.

* `base: other.yaml` inherits another config (path relative to the file), keys here override it
  (mappings are merged key by key, except `model_kwargs`, which is replaced as a whole).
* Unknown keys are an error that names the key, so a typo never silently falls back to a default.
* `overrides` ("align.lambda=0", "epoch_size=2") are applied last; values are parsed as YAML.
"""
import copy
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import yaml

DEFAULTS: Dict[str, Any] = {
    "seed": 42,
    "mode": "graph",              # graph | pynative
    "device_target": "CPU",       # CPU | GPU | Ascend
    "output_dir": "runs/default",
    # data: a directory written by `python -m export pack` (manifest.json + MindRecord)
    "data_dir": None,
    "image_size": 28,
    "in_channels": 3,             # images are decoded as RGB (grey images are replicated)
    "mean": [0.5, 0.5, 0.5],      # per-channel, on the 0..1 scale
    "std": [0.5, 0.5, 0.5],
    "transforms": "small",        # small: pad + random crop (28-32 px) | imagenet: mindcv's ImageNet transforms
    "crop_padding": 2,            # small: random crop with this padding (0 = off)
    "hflip": True,
    "rrc_scale": [0.08, 1.0],     # imagenet: RandomResizedCrop scale range
    "auto_augment": None,         # imagenet: e.g. "randaug-m9-mstd0.5-inc1" (mindcv names)
    "color_jitter": None,         # imagenet: used when auto_augment is None
    "re_prob": 0.0,               # imagenet: random erasing probability
    "interpolation": "bilinear",
    "crop_pct": 0.875,            # imagenet eval: resize to image_size / crop_pct, centre crop
    "mixup": 0.0,                 # mixup alpha (0 = off)
    "cutmix": 0.0,                # cutmix alpha (0 = off)
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    # input pipeline: map/batch workers per device, and whether Python transforms (mindcv's RandAugment,
    # mixup) run in processes instead of threads (README, "Sizing the data workers")
    "num_parallel_workers": 2,
    "python_multiprocessing": False,
    # model
    "model": "resnet18_cifar",
    "model_kwargs": {},
    "num_classes": None,          # None: from the manifest
    "pretrained_ckpt": None,
    # schedule
    "batch_size": 128,
    "eval_batch_size": 256,
    "epoch_size": 10,
    "stop_at_epoch": None,        # stop (resumably) after this epoch, e.g. to fit a cluster job's time limit
    "opt": "momentum",
    "lr": 0.1,
    "lr_base_batch": None,        # if set: lr is scaled by global_batch / lr_base_batch (e.g. 256)
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "weight_decay_filter": "disable",  # mindcv: disable | auto (no decay on bias/norm/1-D) | norm_and_bias
    # layer-wise lr decay (MAE/BEiT fine-tuning): layer i of L gets lr * layer_decay ** (L - i); stem 0,
    # block i -> i + 1, head/final norm/projector last. None = off. Decay is then off for all 1-D params
    # and the backbone's no_weight_decay() names (mindcv's param_groups_layer_decay)
    "layer_decay": None,
    "scheduler": "cosine_decay",
    "min_lr": 0.0,
    "warmup_epochs": 1,
    "warmup_factor": 0.01,
    "label_smoothing": 0.0,
    "clip_grad_norm": 0.0,        # 0 = off
    "ema": False,                 # keep an EMA of the weights (ema.* in checkpoints)
    "ema_decay": 0.9999,
    "ema_warmup": 0,              # 0: constant decay (timm ModelEma); N: mindcv's decay * (1 - exp(-step / N))
    # mixed precision: O0 (float32, CPU) | O1 | O2 | O3 (Ascend/GPU); loss scaling none | fixed | dynamic
    "amp_level": "O0",
    "loss_scale_type": "none",
    "loss_scale": 1024.0,
    "eval_every": 1,              # epochs between evaluations (0 = only at the end)
    "save_every": 0,              # also keep epoch_N.ckpt every N epochs (0 = only last.ckpt and best.ckpt)
    "log_every": 20,              # steps between progress-bar refreshes of the running losses (unsunk runs)
    # feed the device from a data queue, whole epochs without a return to Python: null = on for
    # Ascend/GPU, off for CPU (where MindSpore cannot sink; true there runs unsunk)
    "dataset_sink_mode": None,
    # resume: true replays the input pipeline of the epochs already trained (decode and augment, no
    # training), so the resumed run's augmentations match an uninterrupted run's, not only its order;
    # false starts at once with the same order and new augmentation draws (MindSpore's fast recovery)
    "exact_resume": True,
    # GPT4Image alignment (lambda = 0 is the baseline, same code path)
    "align": {
        "lambda": 0.3,
        "tau": 0.5,
        "loss": "infonce",        # infonce | clip | cosine
        "projector": "linear",    # linear (paper) | mlp (authors' code)
        "mlp_bn": True,
        "normalize": True,        # L2-normalise W f before the dot product (authors' code)
    },
}


class ConfigError(ValueError):
    pass


def _merge(base: Dict, new: Dict, schema: Dict, where: str) -> Dict:
    out = copy.deepcopy(base)
    for key, value in (new or {}).items():
        path = f"{where}{key}"
        if key not in schema:
            raise ConfigError(f"unknown config key {path!r}")
        if isinstance(schema[key], dict) and key != "model_kwargs":
            if not isinstance(value, dict):
                raise ConfigError(f"config key {path!r} must be a mapping")
            out[key] = _merge(out[key], value, schema[key], path + ".")
        else:
            out[key] = value
    return out


def _load_file(path: Path, seen=()) -> Dict:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config {path}: circular `base`")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    parent = _load_file(path.parent / base, seen + (path.resolve(),))
    return _deep_update(parent, data)


def _deep_update(a: Dict, b: Dict) -> Dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        # model_kwargs belong to one model: a config that sets them replaces its base's (as --set does)
        merge = isinstance(v, dict) and isinstance(out.get(k), dict) and k != "model_kwargs"
        out[k] = _deep_update(out[k], v) if merge else v
    return out


def parse_override(item: str) -> Dict:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not KEY=VALUE")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw)
    out: Dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Dict:
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        cfg = _merge(cfg, _load_file(Path(path)), DEFAULTS, "")
    for item in overrides:
        cfg = _merge(cfg, parse_override(item), DEFAULTS, "")
    validate(cfg)
    return cfg


def validate(cfg: Dict) -> None:
    if cfg["transforms"] not in ("small", "imagenet"):
        raise ConfigError(f"transforms must be small or imagenet, got {cfg['transforms']!r}")
    if cfg["mode"] not in ("graph", "pynative"):
        raise ConfigError(f"mode must be graph or pynative, got {cfg['mode']!r}")
    if cfg["amp_level"] not in ("O0", "O1", "O2", "O3"):
        raise ConfigError(f"amp_level must be O0, O1, O2 or O3, got {cfg['amp_level']!r}")
    if cfg["loss_scale_type"] not in ("none", "fixed", "dynamic"):
        raise ConfigError(f"loss_scale_type must be none, fixed or dynamic, got {cfg['loss_scale_type']!r}")
    if cfg["align"]["lambda"] < 0:
        raise ConfigError("align.lambda must be >= 0")
    if cfg["batch_size"] < 2 and cfg["align"]["lambda"] > 0 and cfg["align"]["loss"] != "cosine":
        raise ConfigError("contrastive alignment needs batch_size >= 2")
    if cfg["layer_decay"] is not None:
        if not 0 < cfg["layer_decay"] <= 1:
            raise ConfigError(f"layer_decay must be in (0, 1], got {cfg['layer_decay']!r}")
        if cfg["weight_decay_filter"] == "auto":  # mindcv would silently skip the layer decay
            raise ConfigError("layer_decay needs weight_decay_filter disable or norm_and_bias, not auto")
    for key in ("dataset_sink_mode", "python_multiprocessing", "exact_resume"):
        if cfg[key] not in (None, True, False) or (key != "dataset_sink_mode" and cfg[key] is None):
            raise ConfigError(f"{key} must be true or false" + (" or null" if key == "dataset_sink_mode" else "")
                              + f", got {cfg[key]!r}")
    if not isinstance(cfg["num_parallel_workers"], int) or cfg["num_parallel_workers"] < 1:
        raise ConfigError(f"num_parallel_workers must be an integer >= 1, got {cfg['num_parallel_workers']!r}")
    for key in ("mean", "std"):
        if len(cfg[key]) != cfg["in_channels"]:
            raise ConfigError(f"{key} has {len(cfg[key])} values for in_channels={cfg['in_channels']}")


def save_config(cfg: Dict, path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
