"""`python -m ms_gpt4image convert`: PyTorch checkpoints -> MindSpore checkpoints.

The PyTorch file is read in a separate process (`python -m export dump-torch`, torch never shares a
process with mindspore); here the names are mapped onto our backbones and every tensor is checked
against the built network before anything is written.

Formats (what produced the .pth):
  torchvision-resnet  torchvision ResNet-18/50          -> resnet18 / resnet50 (torch_maxpool)
  timm-deit           timm / official DeiT-S/B           -> deit_small / deit_base
  convnext            official ConvNeXt-T/S/B            -> convnext_tiny / _small / _base
  gpt4image-resnet    the authors' ResNet best_model.pth.tar ({'model': ...}: `model.*` + `proj_layer.*`)
  gpt4image-deit      the authors' DeiT checkpoint.pth   ({'model': ...}: timm names + `proj_layer.*`)
Plain backbones give a deployable checkpoint (backbone names); the gpt4image formats give a training
checkpoint with `backbone.*` and `projector.*` (the projector for `align.projector: linear|mlp`).
"""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import mindspore as ms

from .gpt4image import Projector
from .models import create_backbone

_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_LN = {"weight": "gamma", "bias": "beta"}


def _norm(prefix: str, leaf: str, table: Dict[str, str]) -> str:
    return f"{prefix}.{table[leaf]}"


def map_torchvision_resnet(sd: Dict) -> Dict:
    out = {}
    for name, v in sd.items():
        parts = name.split(".")
        leaf, mod = parts[-1], ".".join(parts[:-1])
        mod = mod.replace("downsample", "down_sample")
        if mod.startswith("fc"):
            new = f"classifier.{leaf}"
        elif re.search(r"(^bn\d|\.bn\d|down_sample\.1)$", mod):
            new = _norm(mod, leaf, _BN)
        else:
            new = f"{mod}.{leaf}"
        out[f"model.{new}"] = v
    return out


def map_timm_vit(sd: Dict) -> Dict:
    out = {}
    for name, v in sd.items():
        parts = name.split(".")
        leaf, mod = parts[-1], ".".join(parts[:-1])
        if re.search(r"(^|\.)norm\d?$", mod):
            out[_norm(mod, leaf, _LN)] = v
        else:
            out[name] = v
    return out


def map_convnext(sd: Dict) -> Dict:
    out = {}
    for name, v in sd.items():
        m = re.match(r"downsample_layers\.(\d)\.(\d)\.(\w+)$", name)
        if m:
            i, j, leaf = int(m[1]), int(m[2]), m[3]
            is_norm = (i == 0 and j == 1) or (i > 0 and j == 0)
            out[f"model.feature.{2 * i}.{j}.{_LN[leaf] if is_norm else leaf}"] = v
            continue
        m = re.match(r"stages\.(\d)\.(\d+)\.(.+)$", name)
        if m:
            i, j, rest = int(m[1]), int(m[2]), m[3]
            if rest == "gamma":
                rest = "gamma_"
            elif rest.startswith("norm."):
                rest = "norm." + _LN[rest.split(".")[1]]
            out[f"model.feature.{2 * i + 1}.{j}.{rest}"] = v
            continue
        if name.startswith("norm."):
            out[f"model.norm.{_LN[name.split('.')[1]]}"] = v
        elif name.startswith("head."):
            out[f"model.classifier.{name.split('.')[1]}"] = v
        else:
            out[name] = v  # unknown: reported as unexpected
    return out


def _split_projector(sd: Dict) -> Tuple[Dict, Dict]:
    proj = {k[len("proj_layer."):]: v for k, v in sd.items() if k.startswith("proj_layer.")}
    rest = {k: v for k, v in sd.items() if not k.startswith("proj_layer.")}
    return rest, proj


def map_projector(proj: Dict) -> Tuple[Dict, Dict]:
    """The authors' proj_layer -> our Projector names; also returns Projector's constructor args."""
    if "weight" in proj:  # linear
        return {"net.0.weight": proj["weight"]}, {"kind": "linear", "in_dim": proj["weight"].shape[1],
                                                   "out_dim": proj["weight"].shape[0], "mlp_bn": True}
    bn = "1.running_mean" in proj
    out = {}
    for k, v in proj.items():
        idx, leaf = k.split(".")
        out[f"net.{idx}.{_BN[leaf] if bn and idx == '1' else leaf}"] = v
    last = "3" if bn else "2"
    return out, {"kind": "mlp", "in_dim": proj["0.weight"].shape[1], "out_dim": proj[f"{last}.weight"].shape[0],
                 "mlp_bn": bn}


FORMATS: Dict[str, Callable] = {"torchvision-resnet": map_torchvision_resnet, "timm-deit": map_timm_vit,
                                "convnext": map_convnext, "gpt4image-resnet": map_torchvision_resnet,
                                "gpt4image-deit": map_timm_vit}


def _num_classes(mapped: Dict) -> int:
    for name in ("model.classifier.weight", "head.weight"):
        if name in mapped:
            return int(mapped[name].shape[0])
    raise KeyError("no classifier weight (fc / head) in the checkpoint")


def read_torch_checkpoint(src, key=None, unsafe_pickle=False) -> Dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "state.npz"
        cmd = [sys.executable, "-m", "export", "dump-torch", str(src), str(npz)]
        cmd += ["--key", key] if key else []
        cmd += ["--unsafe-pickle"] if unsafe_pickle else []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                           os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise ValueError(f"reading {src} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
        with np.load(npz) as data:
            return {k: data[k] for k in data.files}


def _check_and_fill(net, mapped: Dict, what: str) -> None:
    own = {p.name: p for p in net.get_parameters()}
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise ValueError(f"{what}: checkpoint does not fit: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {unexpected[:5]} ({len(unexpected)})")
    for name, p in own.items():
        if tuple(mapped[name].shape) != tuple(p.shape):
            raise ValueError(f"{what}: {name} has shape {mapped[name].shape}, the network wants {tuple(p.shape)}")
        p.set_data(ms.Tensor(mapped[name].astype(np.float32)))


def run_convert(src, fmt: str, model: str, out, image_size: int = 224, key=None, unsafe_pickle=False) -> Dict:
    if fmt not in FORMATS:
        raise KeyError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    sd = read_torch_checkpoint(src, key, unsafe_pickle)
    projector = None
    if fmt.startswith("gpt4image"):
        sd, proj = _split_projector(sd)
        if fmt == "gpt4image-resnet":  # WrapperModel keeps the torchvision net under `model.`
            sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}
        if proj:
            projector = map_projector(proj)
    mapped = FORMATS[fmt](sd)
    kwargs = {"torch_maxpool": True} if "resnet" in fmt else {}
    net = create_backbone(model, num_classes=_num_classes(mapped), image_size=image_size, **kwargs)
    _check_and_fill(net, mapped, f"{src} -> {model}")
    entries = [{"name": p.name, "data": p} for p in net.get_parameters()]
    report = {"src": str(src), "format": fmt, "model": model, "num_classes": _num_classes(mapped),
              "model_kwargs": kwargs, "tensors": len(entries), "out": str(out)}
    if projector is not None:
        weights, args = projector
        proj_net = Projector(args["in_dim"], args["out_dim"], args["kind"], args["mlp_bn"])
        _check_and_fill(proj_net, weights, f"{src} projector")
        entries = [{"name": "backbone." + e["name"], "data": e["data"]} for e in entries]
        entries += [{"name": "projector." + p.name, "data": p} for p in proj_net.get_parameters()]
        report["projector"] = {"projector": args["kind"], "mlp_bn": args["mlp_bn"], "text_dim": args["out_dim"]}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".partial.ckpt")
    ms.save_checkpoint(entries, str(tmp))
    os.replace(tmp, out)
    return report
