"""`python -m ms_gpt4image train -c CONFIG`: CE + lambda * alignment, graph mode, MindRecord input.

Writes to output_dir: config.yaml (resolved), log.jsonl (one line per epoch), last.ckpt and
best.ckpt (full training state; epoch_N.ckpt every `save_every` epochs), summary.json.
`--resume` continues from last.ckpt, `--resume PATH` from any saved training checkpoint.
"""
import json
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from tqdm import tqdm

import mindspore as ms
from mindcv.optim import create_optimizer
from mindcv.scheduler import create_scheduler

from .checkpoint import load_backbone, load_train_state, save_train_state
from .config import save_config
from .data import create_dataset, load_manifest
from .distributed import World, init_distributed
from .engine import NetWithLoss, TrainStep, evaluate, setup_context
from .gpt4image import GPT4ImageNet
from .losses import GPT4ImageLoss
from .models import create_backbone


def build_backbone(cfg: Dict, num_classes: int):
    backbone = create_backbone(cfg["model"], num_classes=num_classes, in_channels=cfg["in_channels"],
                               image_size=cfg["image_size"], **cfg["model_kwargs"])
    if cfg["pretrained_ckpt"]:
        report = load_backbone(backbone, cfg["pretrained_ckpt"], strict=False)
        # what was not loaded (a new head, an MAE decoder): up to 20 names per kind, and how many in all
        shown = {k: v[:20] + ([f"... {len(v) - 20} more"] if len(v) > 20 else []) for k, v in report.items()}
        print(f"initialised from {cfg['pretrained_ckpt']}: {json.dumps(shown)}")
    return backbone


def num_classes_of(cfg: Dict, manifest: Dict) -> int:
    n = cfg["num_classes"] or manifest["num_classes"]
    if n != manifest["num_classes"]:
        raise ValueError(f"num_classes={n} but {cfg['data_dir']}/manifest.json has {manifest['num_classes']} classes")
    return n


def scaled_lr(cfg: Dict, world: World) -> float:
    """lr * global_batch / lr_base_batch when `lr_base_batch` is set (the linear scaling rule)."""
    if not cfg["lr_base_batch"]:
        return cfg["lr"]
    return cfg["lr"] * cfg["batch_size"] * world.size / cfg["lr_base_batch"]


def build_training(cfg: Dict, steps_per_epoch: int, manifest: Dict, world: World = World()):
    a = cfg["align"]
    net = GPT4ImageNet(build_backbone(cfg, num_classes_of(cfg, manifest)), manifest["embedding"]["dim"],
                       a["projector"], a["mlp_bn"])
    mixing = cfg["mixup"] > 0 or cfg["cutmix"] > 0  # then smoothing is inside the soft targets
    loss = GPT4ImageLoss(a["lambda"], a["loss"], a["tau"], a["normalize"], 0.0 if mixing else cfg["label_smoothing"],
                         world.size, world.rank)
    lr = create_scheduler(steps_per_epoch, scheduler=cfg["scheduler"], lr=scaled_lr(cfg, world), min_lr=cfg["min_lr"],
                          warmup_epochs=cfg["warmup_epochs"], warmup_factor=cfg["warmup_factor"],
                          decay_epochs=cfg["epoch_size"] - cfg["warmup_epochs"], num_epochs=cfg["epoch_size"])
    opt = build_optimizer(cfg, net, lr)
    if cfg["amp_level"] != "O0":
        ms.amp.auto_mixed_precision(net, cfg["amp_level"])
    step = TrainStep(NetWithLoss(net, loss), opt, loss_scale_sense(cfg), ema_decay=cfg["ema_decay"] if cfg["ema"] else 0.0,
                     clip_grad_norm=cfg["clip_grad_norm"], ema_warmup=cfg["ema_warmup"])
    return net, step, lr


def build_optimizer(cfg: Dict, net, lr):
    """mindcv's optimizer; with `layer_decay`, mindcv's layer-wise lr decay groups, layered by the
    backbone's `group_matcher` (models/layer_ids.py)."""
    if cfg["layer_decay"] is not None and not hasattr(net.backbone, "group_matcher"):
        raise ValueError(f"layer_decay: backbone {cfg['model']} has no layer ids (group_matcher); "
                         f"set layer_decay: null")
    return create_optimizer(net, opt=cfg["opt"], lr=lr, weight_decay=cfg["weight_decay"], momentum=cfg["momentum"],
                            nesterov=cfg["nesterov"], weight_decay_filter=cfg["weight_decay_filter"],
                            layer_decay=cfg["layer_decay"])


def loss_scale_sense(cfg: Dict):
    """none -> 1.0; fixed -> Tensor(loss_scale); dynamic -> an update cell that skips overflowing steps."""
    kind = cfg["loss_scale_type"]
    if kind == "none":
        return None
    if kind == "fixed":
        return ms.Tensor(float(cfg["loss_scale"]), ms.float32)
    if kind == "dynamic":
        return ms.nn.DynamicLossScaleUpdateCell(loss_scale_value=float(cfg["loss_scale"]), scale_factor=2,
                                                scale_window=1000)
    raise ValueError(f"loss_scale_type must be none, fixed or dynamic, got {kind!r}")


def copy_ema_weights(step, backbone) -> None:
    """EMA copies (`ema.backbone.*` in the train step) -> a standalone backbone for evaluation."""
    ema = {p.name[len("ema.backbone."):]: p for p in step.ema_weights if p.name.startswith("ema.backbone.")}
    for p in backbone.get_parameters():
        p.set_data(ms.Tensor(ema[p.name].asnumpy()))  # a copy: the EMA keeps moving


def resume_path(out: Path, resume) -> Optional[Path]:
    """resume: False/None (fresh run), True (OUTPUT_DIR/last.ckpt if present) or a checkpoint path."""
    if not resume:
        return None
    if resume is True:
        return out / "last.ckpt" if (out / "last.ckpt").exists() else None
    if not Path(resume).exists():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
    return Path(resume)


def train(cfg: Dict, resume=False) -> Dict:
    setup_context(cfg)  # the same seed on every rank: identical initial weights
    world = init_distributed()
    main = world.is_main  # only rank 0 evaluates and writes files
    shard = dict(num_shards=world.size, shard_id=world.rank) if world.distributed else {}
    out = Path(cfg["output_dir"])
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    manifest = load_manifest(cfg["data_dir"])
    train_ds, n_train = create_dataset(cfg, "train", epoch_seed=cfg["seed"], **shard)
    steps = train_ds.get_dataset_size()
    if steps == 0:
        raise ValueError(f"{cfg['data_dir']}: {n_train} training samples per device < batch_size {cfg['batch_size']}")
    eval_ds, n_eval = create_dataset(cfg, "eval") if main else (None, 0)
    net, step, lr = build_training(cfg, steps, manifest, world)
    ema_net = build_backbone(dict(cfg, pretrained_ckpt=None), manifest["num_classes"]) if cfg["ema"] and main else None

    start_epoch, best = 0, -1.0
    log_path = out / "log.jsonl"
    ckpt = resume_path(out, resume)
    if ckpt is not None:
        state = load_train_state(step, ckpt)
        start_epoch, best = state["epoch"], state["best_top1"]
        print(f"rank {world.rank}: resumed from {ckpt} at epoch {start_epoch}")
        if start_epoch >= cfg["epoch_size"] and (out / "summary.json").exists():
            return json.loads((out / "summary.json").read_text())  # finished before: nothing to do
        if main:
            kept = [l for l in log_path.read_text().splitlines() if json.loads(l)["epoch"] <= start_epoch] \
                if log_path.exists() else []
            log_path.write_text("".join(l + "\n" for l in kept))
    elif main and log_path.exists():
        log_path.unlink()

    a = cfg["align"]
    if main:
        print(f"train {cfg['model']} on {manifest['dataset']}: {n_train} images per device, {steps} steps/epoch, "
              f"{world.size} device(s), batch {cfg['batch_size']}/device = {cfg['batch_size'] * world.size} global, "
              f"lr {scaled_lr(cfg, world):g}" + (f" (= {cfg['lr']:g} x {cfg['batch_size'] * world.size}/"
                                                 f"{cfg['lr_base_batch']})" if cfg["lr_base_batch"] else "") +
              f", lambda {a['lambda']}, tau {a['tau']}, loss {a['loss']}, projector {a['projector']}, "
              f"eval {n_eval} images")
    t_start, step_times, last_eval = time.time(), [], None
    for epoch in range(start_epoch, cfg["epoch_size"]):
        step.set_train(True)
        # a fresh pipeline per epoch, seeded by epoch: a resumed run sees the same order
        train_ds, _ = create_dataset(cfg, "train", epoch_seed=cfg["seed"] + epoch, **shard)
        sums, t_epoch, seen = np.zeros(3), time.time(), 0
        bar = tqdm(train_ds.create_tuple_iterator(num_epochs=1), total=steps, desc=f"epoch {epoch + 1}/{cfg['epoch_size']}",
                   unit="step", leave=False, disable=not main)
        for i, (image, label, text_emb) in enumerate(bar):
            t0 = time.time()
            loss, ce, align = step(image, label, text_emb)
            vals = np.array([float(loss.asnumpy()), float(ce.asnumpy()), float(align.asnumpy())])
            step_times.append(time.time() - t0)
            if not np.all(np.isfinite(vals)):
                raise FloatingPointError(f"epoch {epoch + 1} step {i}: non-finite loss {vals.tolist()}")
            sums += vals
            seen += 1
            if i % cfg["log_every"] == 0:
                bar.set_postfix(ce=f"{sums[1] / seen:.3f}", align=f"{sums[2] / seen:.3f}")
        epoch_time = time.time() - t_epoch
        record = {"epoch": epoch + 1, "loss": sums[0] / seen, "ce": sums[1] / seen, "align": sums[2] / seen,
                  "lr": float(lr[min((epoch + 1) * steps, len(lr)) - 1]), "epoch_time_s": epoch_time,
                  "images_per_s": seen * cfg["batch_size"] * world.size / epoch_time}
        if main:
            is_last = epoch + 1 == cfg["epoch_size"]
            if is_last or (cfg["eval_every"] and (epoch + 1) % cfg["eval_every"] == 0):
                last_eval = evaluate(net.backbone, eval_ds)
                record.update(top1=last_eval["top1"], top5=last_eval["top5"])
                if ema_net is not None:  # the EMA weights are what export/evaluate use by default
                    copy_ema_weights(step, ema_net)
                    ema_eval = evaluate(ema_net, eval_ds)
                    record.update(ema_top1=ema_eval["top1"], ema_top5=ema_eval["top5"])
                    last_eval = ema_eval
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}))
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            score = record.get("ema_top1", record.get("top1"))  # ranks what gets deployed
            if score is not None and score > best:
                best = score
                save_train_state(step, out / "best.ckpt", epoch + 1, best)
            save_train_state(step, out / "last.ckpt", epoch + 1, best)
            if cfg["save_every"] and (epoch + 1) % cfg["save_every"] == 0:
                save_train_state(step, out / f"epoch_{epoch + 1}.ckpt", epoch + 1, best)
        if cfg["stop_at_epoch"] and epoch + 1 >= cfg["stop_at_epoch"]:
            print(f"stopping after epoch {epoch + 1} (stop_at_epoch); continue with --resume")
            break

    steady = step_times[1:] or step_times  # the first step includes graph compilation
    summary = {"model": cfg["model"], "lambda": a["lambda"], "epochs": cfg["epoch_size"], "devices": world.size,
               "train_images": n_train * world.size, "eval_images": n_eval,
               "final_top1": last_eval["top1"] if last_eval else None,
               "final_top5": last_eval["top5"] if last_eval else None, "best_top1": best,
               "wall_time_s": time.time() - t_start,
               "train_images_per_s": cfg["batch_size"] * world.size / float(np.median(steady)) if steady else None}
    if main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
