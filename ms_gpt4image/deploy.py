"""Evaluation from a checkpoint and export of the deployable net (backbone + classifier only).

Export writes, beside OUT.mindir and OUT.ckpt, OUT.model.json: the model spec that inference needs
(architecture, class names, input size and channels, mean/std and the eval resize/crop), so that
`predict` runs from the MindIR or the deployable checkpoint alone."""
from pathlib import Path
from typing import Dict

import numpy as np
import mindspore as ms
import mindspore.nn as nn

from .checkpoint import backbone_params, load_backbone, save_deploy
from .data import create_dataset, load_manifest, pipeline_errors
from .engine import evaluate, setup_context
from .files import write_json_atomic
from .models import create_backbone
from .precision import mixed_precision
from .train import num_classes_of


MODEL_SPEC_VERSION = 1
# the input the net expects and what image_ops(spec, train=False) reads to prepare it
PREPROCESS_KEYS = ("transforms", "image_size", "in_channels", "mean", "std", "crop_pct", "interpolation")


def model_spec(cfg: Dict, manifest: Dict) -> Dict:
    """Everything inference needs besides the weights (written as OUT.model.json by export)."""
    return {"spec_version": MODEL_SPEC_VERSION, "model": cfg["model"], "model_kwargs": cfg["model_kwargs"],
            "num_classes": num_classes_of(cfg, manifest), "class_names": manifest["class_names"],
            "dataset": manifest["dataset"], "amp_level": cfg["amp_level"], **{k: cfg[k] for k in PREPROCESS_KEYS}}


def model_spec_path(model_path) -> Path:
    """OUT.mindir / OUT.ckpt -> OUT.model.json."""
    p = Path(model_path)
    return p.with_name(p.stem + ".model.json")


def build_backbone_from_spec(spec: Dict, ckpt, weights: str = "auto") -> nn.Cell:
    """The deployable net with `ckpt`'s weights, at the spec's precision (`amp_level`, the training
    recipe's: evaluate, export and predict score as training did; a spec without it is float32)."""
    net = create_backbone(spec["model"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                          image_size=spec["image_size"], **spec["model_kwargs"])
    load_backbone(net, ckpt, strict=True, weights=weights)
    net = mixed_precision(net, spec.get("amp_level", "O0"))
    net.set_train(False)
    return net


def build_deploy_net(cfg: Dict, ckpt, weights: str = "auto") -> nn.Cell:
    return build_backbone_from_spec(model_spec(cfg, load_manifest(cfg["data_dir"])), ckpt, weights)


def run_evaluate(cfg: Dict, ckpt, weights: str = "auto") -> Dict:
    """top-1/top-5 of `ckpt`. weights auto: what the run reports (`report_top1`): raw -> the raw
    weights; ema -> the EMA weights when the checkpoint has them; max -> both, the better one's scores
    (with top1_raw and top1_ema)."""
    setup_context(cfg)
    data, _ = create_dataset(cfg, "eval")
    kinds = [weights]
    if weights == "auto" and cfg["report_top1"] != "ema":
        kinds = ["raw"] + (["ema"] if cfg["report_top1"] == "max" and has_ema_weights(ckpt) else [])
    results = {}
    with pipeline_errors("eval", cfg["data_dir"]):
        for kind in kinds:
            results[kind] = {"checkpoint": str(ckpt), "weights": kind, **evaluate(build_deploy_net(cfg, ckpt, kind), data)}
    best = max(results.values(), key=lambda r: r["top1"])
    if len(results) > 1:
        best = dict(best, reported="max", top1_raw=results["raw"]["top1"], top1_ema=results["ema"]["top1"])
    return best


def has_ema_weights(ckpt) -> bool:
    try:
        backbone_params(ckpt, "ema")
    except ValueError:
        return False
    return True


def run_export(cfg: Dict, ckpt, out_prefix, check_batches: int = 1, weights: str = "auto") -> Dict:
    """Writes OUT.mindir and OUT.ckpt; reloads the MindIR with `ms.load` + `nn.GraphCell` and checks
    that it gives the trained net's logits on real eval batches."""
    setup_context(cfg)
    if weights == "auto" and cfg["report_top1"] == "raw":  # the weights the run reports (max: EMA, when kept)
        weights = "raw"
    spec = model_spec(cfg, load_manifest(cfg["data_dir"]))
    net = build_backbone_from_spec(spec, ckpt, weights)
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    c, s = cfg["in_channels"], cfg["image_size"]
    # batch dimension left dynamic so the deployed graph accepts any batch size
    ms.export(net, ms.Tensor(shape=[None, c, s, s], dtype=ms.float32), file_name=str(out_prefix), file_format="MINDIR")
    save_deploy(net, f"{out_prefix}.ckpt")
    graph = nn.GraphCell(ms.load(f"{out_prefix}.mindir"))
    data, _ = create_dataset(cfg, "eval")
    max_diff, n = 0.0, 0
    for b, (image, _) in enumerate(data.create_tuple_iterator(num_epochs=1)):
        if b >= check_batches:
            break
        ref, got = net(image).asnumpy(), graph(image).asnumpy()
        max_diff = max(max_diff, float(np.abs(ref - got).max()))
        n += len(ref)
    report = {"mindir": f"{out_prefix}.mindir", "ckpt": f"{out_prefix}.ckpt", "model_spec": f"{out_prefix}.model.json",
              "checked_images": n, "max_abs_logit_diff": max_diff}
    if not max_diff <= 1e-4:
        raise ValueError(f"exported MindIR differs from the trained net: max |logit diff| {max_diff}")
    write_json_atomic(f"{out_prefix}.model.json", spec)
    write_json_atomic(f"{out_prefix}.export.json", report)
    return report
