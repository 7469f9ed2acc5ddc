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
  hiera               official facebookresearch/hiera     -> hiera_*_224 (fine-tuned, or MAE-pretrained: no head)
  hiera-hf            transformers Hiera* (a save_pretrained folder, .safetensors or .bin)
                      -> hiera_*_224; the folder's config.json gives the architecture
A source without a classifier (MAE-pretrained Hiera, transformers HieraModel) gives a backbone checkpoint
without `head.*` (and without `norm.*` when the source has no final norm): `pretrained_ckpt:` starts
fine-tuning from it with a new head. Names a source has that the backbone does not use (the MAE
decoder) are listed in the report as `ignored`.
Plain backbones give a deployable checkpoint (backbone names); the gpt4image formats give a training
checkpoint with `backbone.*` and `projector.*` (the projector for `align.projector: linear|mlp`).
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import mindspore as ms

from .gpt4image import Projector
from .models import create_backbone
from .models.hiera import architecture as hiera_architecture

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


# MAE-only parts of a pretraining checkpoint (official and transformers names): not part of the backbone
_HIERA_MAE = re.compile(r"^(encoder_norm|mask_token|decoder|multi_scale_fusion_heads|multiscale_fusion)")


def map_hiera(sd: Dict) -> Dict:
    """Official facebookresearch/hiera names -> ours (LayerNorm leaves gamma/beta, head.projection -> head)."""
    out = {}
    for name, v in sd.items():
        if _HIERA_MAE.match(name):
            continue
        m = re.match(r"(blocks\.\d+\.norm[12]|norm)\.(weight|bias)$", name)
        if m:
            out[_norm(m[1], m[2], _LN)] = v
        elif name.startswith("head.projection."):
            out["head." + name.split(".")[-1]] = v
        else:
            out[name] = v  # patch_embed.proj.*, pos_embed, blocks.N.{attn,mlp,proj}.*; unknown ones are reported
    return out


_HF_HIERA = [(r"embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
             (r"embeddings\.position_embeddings$", "pos_embed"),
             (r"pooler\.layernorm\.", "norm."), (r"classifier\.", "head.")]


def hiera_kwargs_from_hf_config(config: Dict, model: str) -> Tuple[Dict, int]:
    """A transformers HieraConfig (config.json) -> (the kwargs where it differs from `model`'s
    architecture, the image size); refuses what our Hiera cannot express."""
    if config.get("model_type", "hiera") != "hiera":
        raise ValueError(f"config.json is for model_type {config['model_type']!r}, not a transformers Hiera")
    heads = list(config.get("num_heads", (1, 2, 4, 8)))
    size = config.get("image_size", (224, 224))
    size = size if isinstance(size, int) else list(size)
    eps = config.get("layer_norm_eps", 1e-6)
    head_mul = heads[1] / heads[0] if len(heads) > 1 else 2.0
    if any(heads[i] != int(heads[0] * head_mul ** i) for i in range(len(heads))) or \
            (isinstance(size, list) and size[0] != size[1]) or abs(eps - 1e-6) > 1e-12 or \
            config.get("hidden_act", "gelu") != "gelu" or config.get("num_channels", 3) != 3:
        raise ValueError(f"transformers Hiera config not supported (geometric heads, square input, LayerNorm eps "
                         f"1e-6, exact GELU, 3 channels): num_heads {heads}, image_size {size}, eps {eps}")
    arch = {"embed_dim": config.get("embed_dim", 96), "num_heads": heads[0], "head_mul": head_mul,
            "stages": tuple(config.get("depths", (2, 3, 16, 3))), "q_pool": config.get("num_query_pool", 3),
            "q_stride": tuple(config.get("query_stride", (2, 2))),
            "mask_unit_size": tuple(config.get("masked_unit_size", (8, 8))),
            "mask_unit_attn": tuple(config.get("masked_unit_attention", (True, True, False, False))),
            "dim_mul": config.get("embed_dim_multiplier", 2.0), "patch_kernel": tuple(config.get("patch_size", (7, 7))),
            "patch_stride": tuple(config.get("patch_stride", (4, 4))),
            "patch_padding": tuple(config.get("patch_padding", (3, 3))), "mlp_ratio": config.get("mlp_ratio", 4.0)}
    default = hiera_architecture(model)
    diff = {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()
            if _comparable(v) != _comparable(default[k])}
    return diff, size if isinstance(size, int) else size[0]


def _comparable(v):
    """JSON lists and Python tuples, ints and floats compare equal when they hold the same values."""
    return tuple(v) if isinstance(v, (list, tuple)) else float(v) if isinstance(v, (int, float)) else v


def map_hiera_hf(sd: Dict) -> Dict:
    """transformers Hiera names (HieraModel, HieraForImageClassification or HieraForPreTraining) -> ours:
    stage s, layer j -> block sum(depths[:s]) + j, with the depths read off the names."""
    sd = {k[len("hiera."):] if k.startswith("hiera.") else k: v for k, v in sd.items()}
    depths: Dict[int, int] = {}
    for name in sd:
        m = re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.", name)
        if m:
            depths[int(m[1])] = max(depths.get(int(m[1]), 0), int(m[2]) + 1)
    first = {s: sum(depths.get(i, 0) for i in range(s)) for s in depths}
    out = {}
    for name, v in sd.items():
        if _HIERA_MAE.match(name):
            continue
        m = re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)$", name)
        if m:
            rest = m[3].replace("layernorm_before", "norm1").replace("layernorm_after", "norm2")
            new = f"blocks.{first[int(m[1])] + int(m[2])}.{rest}"
        else:
            new = name
            for pattern, repl in _HF_HIERA:
                new = re.sub("^" + pattern, repl, new)
        leaf = re.match(r"(.*norm[12]?)\.(weight|bias)$", new)
        out[_norm(leaf[1], leaf[2], _LN) if leaf else new] = v
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
                                "gpt4image-deit": map_timm_vit, "hiera": map_hiera, "hiera-hf": map_hiera_hf}
# names a headless source (MAE-pretrained, HieraModel) may lack: fine-tuning initialises them
_HEAD_NAMES = re.compile(r"^(head|norm)\.")


def _num_classes(mapped: Dict) -> Optional[int]:
    for name in ("model.classifier.weight", "head.weight"):
        if name in mapped:
            return int(mapped[name].shape[0])
    return None


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


def _load_safetensors(path: Path) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    try:
        return {k: v.astype(np.float32) for k, v in load_file(str(path)).items()}
    except Exception as e:  # not safetensors, truncated, or a dtype NumPy lacks (bfloat16)
        raise ValueError(f"{path}: cannot read as safetensors ({str(e)[:200]}); bfloat16 files: save them in float32, "
                         f"or pass the pytorch_model.bin") from None


def read_hf_checkpoint(src) -> Tuple[Dict[str, np.ndarray], Dict]:
    """A transformers checkpoint: a save_pretrained folder (config.json + model.safetensors, sharded or
    not, or pytorch_model.bin) or a single .safetensors / .bin file. Returns (state dict, config or {})."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"checkpoint not found: {src}")
    config = {}
    if src.is_dir():
        if (src / "config.json").exists():
            config = json.loads((src / "config.json").read_text())
        index = src / "model.safetensors.index.json"
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in _load_safetensors(src / shard).items()}, config
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (src / name).exists():
                src = src / name
                break
        else:
            raise FileNotFoundError(f"{src}: no model.safetensors or pytorch_model.bin in the folder")
    if src.suffix == ".safetensors":
        return _load_safetensors(src), config
    return read_torch_checkpoint(src), config


def _check_and_fill(net, mapped: Dict, what: str, may_miss=None) -> list:
    """Fills every backbone parameter from `mapped`; names matching `may_miss` may be absent (returned)."""
    own = {p.name: p for p in net.get_parameters()}
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    allowed = [n for n in missing if may_miss is not None and may_miss.match(n)]
    missing = [n for n in missing if n not in allowed]
    if missing or unexpected:
        raise ValueError(f"{what}: checkpoint does not fit: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {unexpected[:5]} ({len(unexpected)})")
    for name, p in own.items():
        if name in allowed:
            continue
        if tuple(mapped[name].shape) != tuple(p.shape):
            raise ValueError(f"{what}: {name} has shape {mapped[name].shape}, the network wants {tuple(p.shape)}")
        p.set_data(ms.Tensor(mapped[name].astype(np.float32)))
    return allowed


def run_convert(src, fmt: str, model: str, out, image_size: Optional[int] = None, key=None, unsafe_pickle=False,
                model_kwargs: Optional[Dict] = None) -> Dict:
    if fmt not in FORMATS:
        raise KeyError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    kwargs = {"torch_maxpool": True} if "resnet" in fmt else {}
    if fmt == "hiera-hf":
        sd, hf_config = read_hf_checkpoint(src)
        if hf_config:  # the architecture as the folder's config.json states it
            arch, hf_size = hiera_kwargs_from_hf_config(hf_config, model)
            kwargs.update(arch)
            image_size = image_size or hf_size
    else:
        sd = read_torch_checkpoint(src, key, unsafe_pickle)
    kwargs.update(model_kwargs or {})
    image_size = image_size or 224
    projector = None
    if fmt.startswith("gpt4image"):
        sd, proj = _split_projector(sd)
        if fmt == "gpt4image-resnet":  # WrapperModel keeps the torchvision net under `model.`
            sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}
        if proj:
            projector = map_projector(proj)
    mapped = FORMATS[fmt](sd)
    ignored = sorted(k for k in sd if fmt.startswith("hiera") and _HIERA_MAE.match(k.removeprefix("hiera.")))
    num_classes = _num_classes(mapped)
    headless = num_classes is None and fmt.startswith("hiera")
    if num_classes is None and not headless:
        raise KeyError(f"{src}: no classifier weight (fc / head) in the checkpoint")
    net = create_backbone(model, num_classes=num_classes or 1000, image_size=image_size, **kwargs)
    left_out = _check_and_fill(net, mapped, f"{src} -> {model}", _HEAD_NAMES if headless else None)
    entries = [{"name": p.name, "data": p} for p in net.get_parameters() if p.name not in left_out]
    report = {"src": str(src), "format": fmt, "model": model, "num_classes": num_classes, "image_size": image_size,
              "model_kwargs": kwargs, "tensors": len(entries), "out": str(out)}
    if headless:  # MAE-pretrained or HieraModel: fine-tuning adds the head
        report["missing"] = left_out
        report["ignored"] = {p: sum(k.split(".")[0] == p for k in ignored)  # MAE parts, per top-level name
                             for p in sorted({k.split(".")[0] for k in ignored})}
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
