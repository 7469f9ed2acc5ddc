"""Checkpoints. A training checkpoint holds everything (net, projector, optimizer state, step,
epoch); a deployable checkpoint holds only the backbone (features + classifier), with its own
parameter names (no `backbone.` prefix) so that a freshly built backbone loads it directly."""
import os
from pathlib import Path
from typing import Dict, Optional

import mindspore as ms
import mindspore.nn as nn

PREFIX = "backbone."


LOG_PREFIX = "_log."  # the train step's device-side running log (engine.TrainStep): never saved


def _atomic_save(obj, path, append_dict: Optional[Dict] = None) -> None:
    path = Path(path)
    tmp = path.with_name(path.stem + ".partial.ckpt")
    ms.save_checkpoint(obj, str(tmp), append_dict=append_dict, choice_func=lambda name: not name.startswith(LOG_PREFIX))
    os.replace(tmp, path)


def save_train_state(train_step: nn.Cell, path, epoch: int, best_top1: float) -> None:
    _atomic_save(train_step, path, {"epoch": epoch, "best_top1": float(best_top1)})


def load_train_state(train_step: nn.Cell, path) -> Dict:
    params = ms.load_checkpoint(str(path))
    missing, _ = ms.load_param_into_net(train_step, params, strict_load=True)
    missing = [m for m in missing if not m.startswith(LOG_PREFIX)]
    if missing:
        raise ValueError(f"{path}: missing {len(missing)} parameters, e.g. {missing[:3]}")
    return {"epoch": int(params["epoch"].asnumpy()), "best_top1": float(params["best_top1"].asnumpy())}


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
