"""Checkpoints. A training checkpoint holds everything (net, projector, optimizer state, step,
epoch); a deployable checkpoint holds only the backbone (features + classifier), with its own
parameter names (no `backbone.` prefix) so that a freshly built backbone loads it directly."""
import json
import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import mindspore as ms
import mindspore.nn as nn

from .files import write_failures

PREFIX = "backbone."


LOG_PREFIX = "_log."  # the train step's device-side running log (engine.TrainStep): never saved


def _atomic_save(obj, path, append_dict: Optional[Dict] = None, kept: str = "") -> None:
    """Written under a temporary name and renamed: an interrupted or failed save (full disk) leaves the
    previous file under `path` intact. A failure is a WriteFailed naming the file and `kept`."""
    path = Path(path)
    tmp = path.with_name(path.stem + ".partial.ckpt")
    try:
        with write_failures(path, kept):
            ms.save_checkpoint(obj, str(tmp), append_dict=append_dict,
                               choice_func=lambda name: not name.startswith(LOG_PREFIX))
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".tmp").unlink(missing_ok=True)  # MindSpore's own temporary name for `tmp`


# What a checkpoint must share with the run that resumes from it (train.run_signature); the schedule
# (epoch_size, steps per epoch) may differ: it is rebuilt for the resumed run
MUST_MATCH = ("model", "model_kwargs", "num_classes", "embedding_dim", "projector", "mlp_bn", "ema", "opt", "layer_decay")


def save_train_state(train_step: nn.Cell, path, epoch: int, best_top1: float, run: Dict, kept: str = "") -> None:
    """The whole train step (net, projector, optimizer state, EMA), the epoch, best top-1 and the run's
    signature (JSON), which `--resume` compares with the run before loading anything."""
    _atomic_save(train_step, path, {"epoch": epoch, "best_top1": float(best_top1), "run": json.dumps(run)}, kept)


def saved_epoch(path) -> Optional[int]:
    """The epoch a training checkpoint holds, or None if there is none (or it cannot be read)."""
    try:
        return int(ms.load_checkpoint(str(path), choice_func=lambda name: name == "epoch")["epoch"].asnumpy())
    except (OSError, ValueError, RuntimeError, KeyError):
        return None


def _schedule_names(train_step: nn.Cell) -> set:
    """The optimizer's per-step lr arrays (one per parameter group): their length is the schedule's."""
    opt = train_step.optimizer
    lrs = opt.learning_rate if opt.is_group_lr else [opt.learning_rate]
    return {lr.learning_rate.name for lr in lrs}


def _not_the_run(path, checkpoint_run: Dict, run: Dict) -> Optional[str]:
    diffs = [f"{k} {json.dumps(checkpoint_run[k])} in the checkpoint, {json.dumps(run[k])} here" for k in MUST_MATCH
             if k in checkpoint_run and checkpoint_run[k] != run[k]]
    if not diffs:
        return None
    return (f"--resume {path}: not a checkpoint of this run: " + "; ".join(diffs) +
            " (to start from its weights instead, set pretrained_ckpt)")


def _misfit(path, params: Dict, own: Dict) -> Optional[str]:
    """Names, shapes that differ between the checkpoint and the run (checkpoints without a signature)."""
    missing = [k for k in own if k not in params]
    unexpected = [k for k in params if k not in own]
    shapes = [f"{k}: {list(params[k].shape)} in the checkpoint, {list(own[k].shape)} here"
              for k in own if k in params and tuple(params[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = ([f"{len(shapes)} shape(s) differ ({'; '.join(shapes[:2])})"] if shapes else []) + \
            ([f"{len(missing)} parameter(s) of this run are not in it (e.g. {', '.join(missing[:3])})"] if missing else []) + \
            ([f"{len(unexpected)} of its parameters are not in this run (e.g. {', '.join(unexpected[:3])})"]
             if unexpected else [])
    return f"--resume {path}: does not fit this run: " + "; ".join(parts)


def load_train_state(train_step: nn.Cell, path, run: Dict, epoch_size: int, steps_per_epoch: int) -> Dict:
    """Restores a training checkpoint into `train_step` after checking, before loading anything, that it
    is a checkpoint of this run (same model, classes, embedding, projector, optimizer) and not past
    `epoch_size`. The lr schedule is not restored: the run's own (rebuilt for its epoch_size and steps
    per epoch) continues at the checkpoint's epoch. Returns {epoch, best_top1, steps_per_epoch} (the
    last: the checkpoint's, None if it predates the signature)."""
    params = ms.load_checkpoint(str(path))
    checkpoint_run = json.loads(params.pop("run")) if isinstance(params.get("run"), str) else {}
    problem = _not_the_run(path, checkpoint_run, run)
    if problem:
        raise ValueError(problem)
    if "epoch" not in params or "best_top1" not in params:
        raise ValueError(f"--resume {path}: not a training checkpoint (no epoch in it: a deployable or released "
                         f"one?); to start from its weights, set pretrained_ckpt")
    epoch, best = int(params.pop("epoch").asnumpy()), float(params.pop("best_top1").asnumpy())
    if epoch > epoch_size:
        raise ValueError(f"--resume {path}: the checkpoint is at epoch {epoch}, past epoch_size = {epoch_size}; "
                         f"set epoch_size >= {epoch} (training longer continues with the schedule of the new length)")
    schedule = _schedule_names(train_step)
    own = {p.name: p for p in train_step.get_parameters() if not p.name.startswith(LOG_PREFIX) and p.name not in schedule}
    params = {k: v for k, v in params.items() if k not in schedule}
    problem = _misfit(path, params, own)
    if problem:
        raise ValueError(problem)
    ms.load_param_into_net(train_step, params, strict_load=True)
    # the rebuilt schedule is indexed by the optimizer's step: the checkpoint's epoch on this run's epochs
    opt = train_step.optimizer
    opt.global_step.set_data(ms.Tensor(np.full(opt.global_step.shape, epoch * steps_per_epoch), opt.global_step.dtype))
    return {"epoch": epoch, "best_top1": best, "steps_per_epoch": checkpoint_run.get("steps_per_epoch")}


def save_deploy(backbone: nn.Cell, path) -> None:
    entries = [{"name": p.name[len(PREFIX):] if p.name.startswith(PREFIX) else p.name, "data": p}
               for p in backbone.get_parameters()]
    _atomic_save(entries, path)


EMA_PREFIX = "ema." + PREFIX


def backbone_params(path, weights: str = "auto") -> Dict:
    """Backbone parameters from a deploy or a training checkpoint, without the `backbone.` prefix.
    weights: raw | ema | auto (the EMA copy when the training checkpoint holds one)."""
    if weights not in ("auto", "ema", "raw"):
        raise ValueError(f"weights must be auto, ema or raw, got {weights!r}")
    if not Path(path).exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    params = ms.load_checkpoint(str(path))
    has_ema = any(k.startswith(EMA_PREFIX) for k in params)
    if weights == "ema" and not has_ema:
        raise ValueError(f"{path}: no EMA weights (train with ema: true)")
    if has_ema and weights != "raw":
        return {k[len(EMA_PREFIX):]: v for k, v in params.items() if k.startswith(EMA_PREFIX)}
    if any(k.startswith(PREFIX) for k in params):
        params = {k[len(PREFIX):]: v for k, v in params.items() if k.startswith(PREFIX)}
    return params


def _match_names(params: Dict, own: Dict) -> Dict:
    """Maps checkpoint names onto the backbone's: strips mindcv's EMA prefix (`ema.`) and adds the
    `model.` prefix of our mindcv wrapper when a plain mindcv checkpoint is loaded."""
    out = {}
    has_ema = any(k.startswith("ema.") for k in params)
    for k, v in params.items():
        if has_ema and not k.startswith("ema."):
            continue  # a file with raw and EMA weights: the EMA ones are the released model
        name = k[len("ema."):] if k.startswith("ema.") else k
        if name not in own and f"model.{name}" in own:
            name = f"model.{name}"
        out[name] = v
    return out


def load_backbone(backbone: nn.Cell, path, strict: bool = True, weights: str = "auto") -> Dict:
    """Loads weights into a standalone backbone (`weights`: see backbone_params). strict=False (initialising from released weights,
    e.g. mindcv's ImageNet checkpoints) skips tensors whose shape differs (a 1000-class head when
    num_classes differs) and reports missing, unexpected and skipped names."""
    own = {p.name: p for p in backbone.get_parameters()}
    params = _match_names(backbone_params(path, weights), own)
    skipped = [k for k, v in params.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if skipped and strict:
        raise ValueError(f"{path}: shape mismatch for {skipped[:5]}")
    unexpected = [k for k in params if k not in own]
    params = {k: v for k, v in params.items() if k in own and k not in skipped}
    missing, _ = ms.load_param_into_net(backbone, params)
    if strict and (missing or unexpected):
        raise ValueError(f"{path}: does not fit this backbone: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return {"missing": missing, "unexpected": unexpected, "shape_mismatch": skipped}
