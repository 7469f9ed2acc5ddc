"""Run configuration: YAML files over defaults, close to mindcv's keys plus an `align` block.

* `base: other.yaml` inherits another config (path relative to the file), keys here override it
  (mappings are merged key by key, except `model_kwargs`, which is replaced as a whole).
* Unknown keys are an error that names the key, so a typo never silently falls back to a default.
* `overrides` ("align.lambda=0", "epoch_size=2") are applied last; values are parsed as YAML.
"""
import copy
import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from .files import atomic_path

class ConfigError(ValueError):
    pass


class Key:
    """One config key: its default and what it allows. `check(value)` returns the value (a float key
    given an integer gets a float) or raises ConfigError naming the key, the value and what is allowed."""

    def __init__(self, default, allowed: str, accept: Callable[[Any], bool], null: bool = False,
                 convert: Callable = lambda v: v):
        self.default, self.allowed, self.accept, self.null, self.convert = default, allowed, accept, null, convert

    def check(self, name: str, value):
        if value is None and self.null:
            return None
        try:
            converted = self.convert(value)
            ok = self.accept(converted)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            allowed = self.allowed + (" or null" if self.null else "")
            raise ConfigError(f"config key {name!r} = {value!r}: must be {allowed}")
        return converted


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _to_float(v):
    # PyYAML reads `1e-3` (no dot) as a string: a numeric string is taken as the number it spells
    if isinstance(v, str):
        v = float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(v)
    return float(v)


def _bound(low, high, low_open, high_open) -> Tuple[str, Callable[[float], bool]]:
    """('> 0', test) for the bounds of a numeric key."""
    parts, tests = [], []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
        tests.append((lambda v: v > low) if low_open else (lambda v: v >= low))
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
        tests.append((lambda v: v < high) if high_open else (lambda v: v <= high))
    return " and ".join(parts), lambda v: all(t(v) for t in tests)


def Int(default, low=None, high=None, null=False) -> Key:
    text, within = _bound(low, high, False, False)
    return Key(default, f"an integer {text}".strip(), lambda v: _is_int(v) and within(v), null)


def Float(default, low=None, high=None, low_open=False, high_open=False, null=False) -> Key:
    text, within = _bound(low, high, low_open, high_open)
    return Key(default, f"a finite number {text}".strip(), lambda v: math.isfinite(v) and within(v), null, _to_float)


def Bool(default, null=False) -> Key:
    return Key(default, "true or false", lambda v: isinstance(v, bool), null)


def Choice(default, choices: Sequence, null=False) -> Key:
    return Key(default, "one of " + ", ".join(map(str, choices)), lambda v: v in choices, null)


def Str(default, null=False, allowed="a non-empty string", accept=lambda v: True) -> Key:
    return Key(default, allowed, lambda v: isinstance(v, str) and v != "" and accept(v), null)


def Floats(default, length: int, low=None, high=None, low_open=False, null=False) -> Key:
    text, within = _bound(low, high, low_open, False)
    return Key(default, f"a list of {length} finite numbers {text}".strip(),
               lambda v: len(v) == length and all(math.isfinite(x) and within(x) for x in v), null,
               lambda v: [_to_float(x) for x in v] if isinstance(v, list) else _fail(v))


def Mapping(default) -> Key:
    return Key(default, "a mapping", lambda v: isinstance(v, dict))


def _fail(v):
    raise TypeError(v)


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "lion", "nadam", "adan", "rmsprop", "adagrad", "lamb")
AUTO_AUGMENT = ("randaug", "autoaug", "3a", "trivialaugwide", "augmix")  # mindcv's policy name prefixes

# Every key, its default and what it allows; DEFAULTS below is the defaults alone.
SCHEMA: Dict[str, Any] = {
    "seed": Int(42, low=0),
    "mode": Choice("graph", ("graph", "pynative")),
    "device_target": Choice("CPU", ("CPU", "GPU", "Ascend")),
    "output_dir": Str("runs/default"),
    # data: a directory written by `python -m export pack` (manifest.json + MindRecord)
    "data_dir": Str(None, null=True),
    "image_size": Int(28, low=1),
    "in_channels": Choice(3, (3,)),   # images are decoded as RGB (grey images are replicated)
    "mean": Floats([0.5, 0.5, 0.5], 3),  # per-channel, on the 0..1 scale
    "std": Floats([0.5, 0.5, 0.5], 3, low=0, low_open=True),
    # small: pad + random crop | imagenet: timm 0.3.2's (ms_gpt4image/augment.py)
    "transforms": Choice("small", ("small", "imagenet")),
    "crop_padding": Int(2, low=0),    # small: random crop with this padding (0 = off)
    "hflip": Bool(True),
    "rrc_scale": Floats([0.08, 1.0], 2, low=0, high=1, low_open=True),  # imagenet: RandomResizedCrop scale
    # imagenet: e.g. "randaug-m9-mstd0.5-inc1" (mindcv names): randaug runs timm's RandAugment
    # (augment.py); the other mindcv policies run mindcv's ops, not checked against timm
    "auto_augment": Str(None, null=True, allowed="a mindcv policy name starting with " + ", ".join(AUTO_AUGMENT),
                        accept=lambda v: v.startswith(AUTO_AUGMENT)),
    "color_jitter": Float(None, low=0, null=True),  # imagenet: used when auto_augment is None
    "re_prob": Float(0.0, low=0, high=1),           # imagenet: random erasing probability
    # imagenet: the erased box's values (normalised scale): pixel = per-pixel N(0, 1), as DeiT, ConvNeXt and
    # MAE/Hiera (timm re_mode 'pixel') | rand = one N(0, 1) per channel | const = 0 (mindcv's, timm's default)
    "re_mode": Choice("pixel", ("pixel", "rand", "const")),
    # imagenet (PIL filters): random = timm's train default, bilinear or bicubic drawn per crop and per
    # geometric RandAugment op (eval then bilinear); pilcubic = bicubic, area = PIL's box filter
    "interpolation": Choice("bilinear", ("bilinear", "bicubic", "nearest", "area", "pilcubic", "random")),
    "crop_pct": Float(0.875, low=0, high=1, low_open=True),  # imagenet eval: resize to size / crop_pct, crop
    "mixup": Float(0.0, low=0),       # mixup alpha (0 = off)
    "cutmix": Float(0.0, low=0),      # cutmix alpha (0 = off)
    "mixup_prob": Float(1.0, low=0, high=1),
    "mixup_switch_prob": Float(0.5, low=0, high=1),
    # input pipeline: map/batch workers per device, and whether Python transforms (the imagenet
    # augmentations, mixup) run in processes instead of threads (docs/cluster.md, "Sizing the data workers")
    "num_parallel_workers": Int(2, low=1),
    "python_multiprocessing": Bool(False),
    # train images to the device as uint8, normalised there (4x fewer bytes through the workers' shared
    # memory and to the device): auto = where the recipe allows (no random erasing, no mixup/cutmix, which
    # the references apply after normalisation) | true | false (ms_gpt4image/device_input.py)
    "device_normalize": Key("auto", "auto, true or false", lambda v: v == "auto" or isinstance(v, bool)),
    # model
    "model": Str("resnet18_cifar"),
    "model_kwargs": Mapping({}),
    "num_classes": Int(None, low=2, null=True),  # None: from the manifest
    "pretrained_ckpt": Str(None, null=True),
    # schedule
    "batch_size": Int(128, low=1),  # per device: the micro-batch of one forward (the recipe's tuned batch)
    # the global batch the recipe's lr, schedule and EMA were tuned for: the run derives its layout from the
    # world size, devices x micro-batch x accumulate_steps = global_batch (batch_layout.py); null = batch_size x
    # devices x accumulate_steps
    "global_batch": Int(None, low=1, null=True),
    # micro-batches accumulated per optimizer update (ConvNeXt's update_freq; engine.TrainStep); null = 1, or
    # what global_batch needs
    "accumulate_steps": Int(None, low=1, null=True),
    "max_device_batch": Int(None, low=1, null=True),  # a card's limit: smaller micro-batches, more accumulation
    # recompute the backbone's blocks in the backward instead of keeping their activations (Cell.recompute():
    # less device memory, about one more forward of compute)
    "recompute": Bool(False),
    # repeated augmentation (DeiT's RASampler): R > 1 trains each epoch on a fresh random 1/R of the data,
    # every image R times in one batch with its own augmentations (repeated_aug.py); 1 = off
    "repeated_aug": Int(1, low=1),
    "eval_batch_size": Int(256, low=1),
    "epoch_size": Int(10, low=1),
    "stop_at_epoch": Int(None, low=1, null=True),  # stop (resumably) after this epoch, e.g. for a job's time limit
    "opt": Choice("momentum", OPTIMIZERS),
    "lr": Float(0.1, low=0, low_open=True),
    "lr_base_batch": Int(None, low=1, null=True),  # if set: lr is scaled by global_batch / lr_base_batch
    "momentum": Float(0.9, low=0, high=1, high_open=True),
    "nesterov": Bool(True),
    "weight_decay": Float(5e-4, low=0),
    # mindcv: disable | auto (no decay on bias/norm/1-D) | norm_and_bias
    "weight_decay_filter": Choice("disable", ("disable", "auto", "norm_and_bias")),
    # layer-wise lr decay (MAE/BEiT fine-tuning): layer i of L gets lr * layer_decay ** (L - i); stem 0,
    # block i -> i + 1, head/final norm/projector last. None = off. Decay is then off for all 1-D params
    # and the backbone's no_weight_decay() names (mindcv's param_groups_layer_decay)
    "layer_decay": Float(None, low=0, high=1, low_open=True, null=True),
    # which layer the last block is in: mae (MAE/BEiT: its own, one factor of layer_decay below the head)
    # | hiera (the Hiera v0.2.0 fine-tuning code's get_layer_id: the head's, full rate)
    "layer_decay_ids": Choice("mae", ("mae", "hiera")),
    "scheduler": Choice("cosine_decay", ("cosine_decay", "warmup_cosine_decay", "constant")),
    "min_lr": Float(0.0, low=0),
    "warmup_epochs": Int(1, low=0),
    "warmup_factor": Float(0.01, low=0, high=1),
    # the forms of the reference schedules (ms_gpt4image/schedule.py); the defaults are mindcv's
    "lr_step": Choice("step", ("step", "epoch")),  # epoch: held within each epoch (scheduler.step() per epoch)
    "lr_epoch_lag": Int(0, low=0, high=1),  # 1: epoch e at the schedule's value for e - 1 (DeiT's timm stepping)
    "warmup_lr": Float(None, low=0, null=True),  # absolute warmup start (timm --warmup-lr); overrides warmup_factor
    "warmup_to_peak": Bool(False),  # the warmup's last step at lr (ConvNeXt's np.linspace warmup)
    "cosine_from": Choice("warmup_end", ("warmup_end", "start")),  # start: timm 0.3.2 (cosine over all epochs)
    "label_smoothing": Float(0.0, low=0, high=1, high_open=True),
    "clip_grad_norm": Float(0.0, low=0),  # 0 = off
    "ema": Bool(False),                   # keep an EMA of the weights (ema.* in checkpoints)
    "ema_decay": Float(0.9999, low=0, high=1, low_open=True, high_open=True),
    # the top-1 a run reports when it keeps an EMA (summary.json final_top1/best_top1, best.ckpt, `evaluate
    # --weights auto`; log.jsonl has both, top1 and top1_ema): raw (DeiT), ema (ConvNeXt) or max (the authors')
    "report_top1": Choice("ema", ("raw", "ema", "max")),
    "ema_warmup": Int(0, low=0),  # 0: constant decay (timm ModelEma); N: mindcv's decay * (1 - exp(-step / N))
    # mixed precision: O0 (float32, CPU) | O2 | O3 (Ascend/GPU; O1 is refused: precision.py); loss scaling
    # none | fixed | dynamic (each skips an update whose gradients are not finite)
    "amp_level": Choice("O0", ("O0", "O1", "O2", "O3")),
    "loss_scale_type": Choice("none", ("none", "fixed", "dynamic")),
    "loss_scale": Float(1024.0, low=0, low_open=True),
    # graph compilation level (mindspore.JitConfig): O0 kernel by kernel, O1 + operator fusion, O2 the whole
    # graph through CANN's GraphEngine (Ascend, graph mode only); null = MindSpore's default for the device
    # (O0 on Ascend A2 / GPU / CPU from MindSpore 2.3; docs/cluster.md, "What differs on Ascend")
    "jit_level": Choice(None, ("O0", "O1", "O2"), null=True),
    "eval_every": Int(1, low=0),  # epochs between evaluations (0 = only at the end)
    "save_every": Int(0, low=0),  # also keep epoch_N.ckpt every N epochs (0 = only last.ckpt and best.ckpt)
    "log_every": Int(20, low=1),  # steps between progress-bar refreshes of the running losses (unsunk runs)
    # feed the device from a data queue, whole epochs without a return to Python: null = on for
    # Ascend/GPU, off for CPU (where MindSpore cannot sink; true there runs unsunk)
    "dataset_sink_mode": Bool(None, null=True),
    # resume: true replays the input pipeline of the epochs already trained (decode and augment, no
    # training), so the resumed run's augmentations match an uninterrupted run's, not only its order;
    # false starts at once with the same order and new augmentation draws (MindSpore's fast recovery)
    "exact_resume": Bool(True),
    # GPT4Image alignment (lambda = 0 is the baseline, same code path)
    "align": {
        "lambda": Float(0.3, low=0),
        "tau": Float(0.5, low=0, low_open=True),
        "loss": Choice("infonce", ("infonce", "clip", "cosine")),
        "projector": Choice("linear", ("linear", "mlp")),  # linear (paper) | mlp (authors' code)
        "mlp_bn": Bool(True),
        "normalize": Bool(True),  # L2-normalise W f before the dot product (authors' code)
        # where the contrastive negatives come from under accumulation: local = the micro-batch (infonce: on
        # this device, as the reference per GPU; clip: gathered over the ranks) | global = the whole global
        # batch, every micro-batch of every rank (gradient caching; engine.TrainStep, docs/train.md)
        "negatives": Choice("local", ("local", "global")),
    },
}


def _defaults(schema: Dict) -> Dict:
    return {k: _defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


DEFAULTS: Dict[str, Any] = _defaults(SCHEMA)


def _merge(base: Dict, new: Dict, schema: Dict, where: str) -> Dict:
    out = copy.deepcopy(base)
    for key, value in (new or {}).items():
        path = f"{where}{key}"
        if key not in schema:
            raise ConfigError(f"unknown config key {path!r}")
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
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


def recipe_dirs() -> List[Path]:
    """Where shipped recipes are: `recipes/` inside an installed package (the wheel carries configs/
    there), `configs/` beside the package in a checkout."""
    here = Path(__file__).resolve().parent
    return [d for d in (here / "recipes", here.parent / "configs") if d.is_dir()]


def list_recipes() -> List[str]:
    names = {p.stem for d in recipe_dirs() for p in d.rglob("*.yaml")}
    return sorted(names)


def find_config(name_or_path: str) -> Path:
    """A config file's path, or a shipped recipe's by name (`imagenet_resnet50`, `ablations/..._tau0p1`)."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix in (".yaml", ".yml") and path.parent != Path("."):
        return path
    name = path.name[:-len(path.suffix)] if path.suffix in (".yaml", ".yml") else path.name
    for d in recipe_dirs():
        found = sorted(d.rglob(f"{name}.yaml"))
        if found:
            return found[0]
    raise ConfigError(f"config {name_or_path!r}: no such file and no shipped recipe of that name "
                      f"(recipes: {', '.join(list_recipes()[:8])}, ...; `python -m ms_gpt4image recipes` lists them)")


def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Dict:
    """path: a YAML file or a shipped recipe's name; overrides: KEY=VALUE strings, applied last."""
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        cfg = _merge(cfg, _load_file(find_config(str(path))), SCHEMA, "")
    for item in overrides:
        cfg = _merge(cfg, parse_override(item), SCHEMA, "")
    return validate(cfg)


def _check_keys(cfg: Dict, schema: Dict, where: str = "") -> Dict:
    return {k: _check_keys(cfg[k], spec, f"{where}{k}.") if isinstance(spec, dict) else spec.check(where + k, cfg[k])
            for k, spec in schema.items()}


def validate(cfg: Dict) -> Dict:
    """Every key's value against SCHEMA, then the relations between keys; returns the checked config
    (numbers as their key's type). The first problem is raised as one line naming the key(s)."""
    cfg = _check_keys(cfg, SCHEMA)

    def need(ok: bool, message: str):
        if not ok:
            raise ConfigError(message)

    a = cfg["align"]
    need(cfg["warmup_epochs"] <= cfg["epoch_size"],
         f"warmup_epochs = {cfg['warmup_epochs']} is longer than epoch_size = {cfg['epoch_size']}: the run would end "
         f"inside the warmup (set warmup_epochs <= epoch_size, e.g. --set warmup_epochs=0 for a short run)")
    need(cfg["stop_at_epoch"] is None or cfg["stop_at_epoch"] <= cfg["epoch_size"],
         f"stop_at_epoch = {cfg['stop_at_epoch']} is after the last epoch (epoch_size = {cfg['epoch_size']})")
    need(cfg["min_lr"] <= cfg["lr"], f"min_lr = {cfg['min_lr']:g} is above lr = {cfg['lr']:g}")
    need(cfg["lr_epoch_lag"] == 0 or cfg["lr_step"] == "epoch",
         f"lr_epoch_lag = {cfg['lr_epoch_lag']} needs lr_step: epoch (the lag is in epochs)")
    need(cfg["layer_decay_ids"] == "mae" or cfg["layer_decay"] is not None,
         f"layer_decay_ids = {cfg['layer_decay_ids']} has no effect without layer_decay")
    lo, hi = cfg["rrc_scale"]
    need(lo <= hi, f"rrc_scale = {cfg['rrc_scale']}: the lower bound is above the upper one")
    r = cfg["repeated_aug"]
    need(cfg["batch_size"] >= r,
         f"batch_size = {cfg['batch_size']} < repeated_aug = {r}: the copies of an image share a batch")
    need(r == 1 or cfg["transforms"] == "imagenet",
         f"repeated_aug = {r} needs transforms: imagenet (MindSpore's random ops of transforms: small, called once "
         f"per copy, would give {r} identical copies; repeated_aug.py)")
    need(cfg["batch_size"] >= 2 or a["lambda"] == 0 or a["loss"] == "cosine",
         f"batch_size = {cfg['batch_size']}: contrastive alignment (align.loss {a['loss']}) needs batch_size >= 2 "
         f"(the other images of the batch are the negatives)")
    need(cfg["amp_level"] != "O1",
         "amp_level = O1 would train in float32: MindSpore's O1 rewrites the network's Python source and does not "
         "enter cells called through methods (forward_features, forward_head), so on these models it converts "
         "nothing (precision.py); use O2 (the recipes' level, BatchNorm/LayerNorm kept in float32) or O3")
    need(cfg["jit_level"] != "O2" or (cfg["device_target"] == "Ascend" and cfg["mode"] == "graph"),
         f"jit_level = O2 (CANN's GraphEngine) needs device_target: Ascend and mode: graph, not "
         f"{cfg['device_target']} in {cfg['mode']} mode (use O0 or O1, or null for MindSpore's default)")
    if cfg["layer_decay"] is not None:  # mindcv would silently skip the layer decay
        need(cfg["weight_decay_filter"] != "auto",
             "layer_decay needs weight_decay_filter disable or norm_and_bias, not auto")
    blockers = device_normalize_blockers(cfg)
    need(cfg["device_normalize"] is not True or not blockers,
         f"device_normalize = true, but {' and '.join(blockers)} run after normalisation on float32 images (as in "
         f"the references): set device_normalize: auto (float32 for this recipe) or false")
    return cfg


def device_normalize_blockers(cfg: Dict) -> List[str]:
    """What keeps a recipe's training images float32 on the host (device_input.py): random erasing and
    mixup/cutmix, which the references apply to normalised float images."""
    out = []
    if cfg["transforms"] == "imagenet" and cfg["re_prob"] > 0:
        out.append(f"random erasing (re_prob = {cfg['re_prob']:g})")
    if cfg["mixup"] > 0 or cfg["cutmix"] > 0:
        out.append(f"mixup/cutmix (mixup = {cfg['mixup']:g}, cutmix = {cfg['cutmix']:g})")
    return out


def save_config(cfg: Dict, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
