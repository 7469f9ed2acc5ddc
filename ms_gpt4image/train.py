"""`python -m ms_gpt4image train -c CONFIG`: CE + lambda * alignment, graph mode, MindRecord input.

Writes to output_dir: config.yaml (resolved), log.jsonl (one line per epoch), last.ckpt and
best.ckpt (full training state; epoch_N.ckpt every `save_every` epochs), summary.json.
`--resume` continues from last.ckpt, `--resume PATH` from any saved training checkpoint.
"""
import json
import time
from pathlib import Path
from typing import Dict, Optional

import mindspore as ms
import mindspore.dataset as ds
from mindspore.train import Model
from mindcv.optim import create_optimizer

from .callbacks import EndOfEpoch, ProgressBar, steady_images_per_s
from .checkpoint import load_backbone, load_train_state
from .compat import jit_level_of, resume_pipeline_at, set_jit_level
from .config import save_config
from .files import atomic_path, write_failures, write_json_atomic
from .data import create_dataset, load_manifest, pipeline_errors
from .distributed import World, init_distributed
from .engine import NetWithLoss, TrainStep, setup_context
from . import device_input
from .gpt4image import GPT4ImageNet
from .host_memory import check_shared_memory
from .losses import GPT4ImageLoss
from .schedule import lr_schedule
from .models import create_backbone, recompute_blocks
from .batch_layout import apply as apply_layout, device_rows, resolve as resolve_layout
from .precision import mixed_precision
from .run_dir import check_output_dir


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
    """lr * global batch / lr_base_batch when `lr_base_batch` is set (the linear scaling rule); the global
    batch counts the accumulated micro-batches (`cfg` as batch_layout.apply gives it)."""
    if not cfg["lr_base_batch"]:
        return cfg["lr"]
    return cfg["lr"] * device_rows(cfg) * world.size / cfg["lr_base_batch"]


def build_training(cfg: Dict, steps_per_epoch: int, manifest: Dict, world: World = World()):
    a = cfg["align"]
    net = GPT4ImageNet(build_backbone(cfg, num_classes_of(cfg, manifest)), manifest["embedding"]["dim"],
                       a["projector"], a["mlp_bn"])
    mixing = cfg["mixup"] > 0 or cfg["cutmix"] > 0  # then smoothing is inside the soft targets
    loss = GPT4ImageLoss(a["lambda"], a["loss"], a["tau"], a["normalize"], 0.0 if mixing else cfg["label_smoothing"],
                         world.size, world.rank, a["negatives"] == "global")
    lr = lr_schedule(cfg, steps_per_epoch, scaled_lr(cfg, world))
    opt = build_optimizer(cfg, net, lr)
    if cfg["recompute"]:
        recompute_blocks(net.backbone)
    # the network auto_mixed_precision returns is the one trained (it shares net's parameters and names)
    # uint8 training images are normalised on the device, in float32 (device_input.py)
    step = TrainStep(NetWithLoss(mixed_precision(net, cfg["amp_level"]), loss, device_input.for_config(cfg)),
                     opt, loss_scale_sense(cfg),
                     ema_decay=cfg["ema_decay"] if cfg["ema"] else 0.0, clip_grad_norm=cfg["clip_grad_norm"],
                     ema_warmup=cfg["ema_warmup"], accumulate_steps=cfg["accumulate_steps"] or 1,
                     global_negatives=a["negatives"] == "global")
    set_jit_level(step, cfg["jit_level"])
    return net, step, lr


def build_eval_net(cfg: Dict, num_classes: int):
    """The network the raw and the EMA weights are evaluated with in turn (callbacks.copy_weights): a
    backbone at the recipe's precision and graph level, so both are scored alike, through one graph."""
    net = mixed_precision(build_backbone(dict(cfg, pretrained_ckpt=None), num_classes), cfg["amp_level"])
    set_jit_level(net, cfg["jit_level"])
    return net


def build_optimizer(cfg: Dict, net, lr):
    """mindcv's optimizer; with `layer_decay`, mindcv's layer-wise lr decay groups, layered by the
    backbone's `group_matcher` (models/layer_ids.py), the last block in the head's layer with
    `layer_decay_ids: hiera`."""
    if cfg["layer_decay"] is not None and not hasattr(net.backbone, "group_matcher"):
        raise ValueError(f"layer_decay: backbone {cfg['model']} has no layer ids (group_matcher); "
                         f"set layer_decay: null")
    net.layer_ids = cfg["layer_decay_ids"]
    return create_optimizer(net, opt=cfg["opt"], lr=lr, weight_decay=cfg["weight_decay"], momentum=cfg["momentum"],
                            nesterov=cfg["nesterov"], weight_decay_filter=cfg["weight_decay_filter"],
                            layer_decay=cfg["layer_decay"])


def loss_scale_sense(cfg: Dict):
    """The loss-scale update cell: none -> fixed scale 1, fixed -> fixed `loss_scale`, dynamic -> a scale
    that halves on overflow and doubles after 1000 clean steps. Under each, TrainStep skips an update
    whose gradients are not finite."""
    kind = cfg["loss_scale_type"]
    if kind == "none":
        return ms.nn.FixedLossScaleUpdateCell(1.0)
    if kind == "fixed":
        return ms.nn.FixedLossScaleUpdateCell(float(cfg["loss_scale"]))
    if kind == "dynamic":
        return ms.nn.DynamicLossScaleUpdateCell(loss_scale_value=float(cfg["loss_scale"]), scale_factor=2,
                                                scale_window=1000)
    raise ValueError(f"loss_scale_type must be none, fixed or dynamic, got {kind!r}")


def resume_path(out: Path, resume) -> Optional[Path]:
    """resume: False/None (fresh run), True (OUTPUT_DIR/last.ckpt if present), a checkpoint path or a
    run's output directory (its last.ckpt)."""
    if not resume:
        return None
    if resume is True:
        return out / "last.ckpt" if (out / "last.ckpt").exists() else None
    path = Path(resume)
    if path.is_dir():  # a run's output directory: its last.ckpt
        path = path / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
    return path


def sink_mode(cfg: Dict) -> bool:
    """dataset_sink_mode: null -> on for Ascend/GPU, off for CPU (MindSpore runs CPU unsunk anyway)."""
    if cfg["dataset_sink_mode"] is None:
        return cfg["device_target"] in ("Ascend", "GPU")
    return cfg["dataset_sink_mode"]


def run_signature(cfg: Dict, manifest: Dict, steps_per_epoch: int) -> Dict:
    """What a training checkpoint records of its run, for `--resume` to compare (checkpoint.MUST_MATCH)."""
    a = cfg["align"]
    return {"model": cfg["model"], "model_kwargs": cfg["model_kwargs"],
            "num_classes": num_classes_of(cfg, manifest), "embedding_dim": manifest["embedding"]["dim"],
            "projector": a["projector"], "mlp_bn": a["mlp_bn"], "ema": cfg["ema"], "opt": cfg["opt"],
            "layer_decay": cfg["layer_decay"], "epoch_size": cfg["epoch_size"], "steps_per_epoch": steps_per_epoch}


def read_log(path: Path, up_to_epoch: int):
    """log.jsonl's lines of epochs <= up_to_epoch; a line that does not parse (a write cut short by an
    older version or by hand) is dropped with a warning instead of failing the resume."""
    kept = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            if json.loads(line)["epoch"] <= up_to_epoch:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            print(f"warning: {path} line {n} is not a log record; dropped")
    return kept


def restore(step, out: Path, resume, run: Dict, cfg: Dict, main: bool, rank: int):
    """(start epoch, best top-1) from a training checkpoint, or (0, -1) for a fresh run; the log is
    cut back to the restored epoch."""
    log_path = out / "log.jsonl"
    ckpt = resume_path(out, resume)
    if ckpt is None:
        if main and log_path.exists():
            with write_failures(log_path):
                log_path.unlink()
        return 0, -1.0
    state = load_train_state(step, ckpt, run, cfg["epoch_size"], run["steps_per_epoch"])
    print(f"rank {rank}: resumed from {ckpt} at epoch {state['epoch']}")
    if state["steps_per_epoch"] not in (None, run["steps_per_epoch"]) and main:
        print(f"steps per epoch changed from {state['steps_per_epoch']} to {run['steps_per_epoch']} (batch size, "
              f"device count or data): the schedule continues at epoch {state['epoch']}")
    if main and log_path.exists():
        kept = read_log(log_path, state["epoch"])
        with write_failures(log_path), atomic_path(log_path) as tmp:
            tmp.write_text("".join(l + "\n" for l in kept))
    return state["epoch"], state["best_top1"]


def train(cfg: Dict, resume=False, overwrite: bool = False) -> Dict:
    # build: context and ranks, the two pipelines (each built once), the net, its train step
    setup_context(cfg)  # the same seed on every rank: identical initial weights
    world = init_distributed(device_target=cfg["device_target"])
    # devices x micro-batch x accumulation = the global batch (batch_layout.py); a layout that cannot make
    # it stops here, before anything is written. config.yaml keeps the config as given (reusable on any
    # world size); the run trains the resolved one
    layout = resolve_layout(cfg, world.size)
    given, cfg = cfg, apply_layout(cfg, layout)
    out = Path(cfg["output_dir"])
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {out} is a file, not a directory")
    check_output_dir(out, resume, overwrite, world)  # another run there: refused, or removed with --overwrite
    if world.is_main:  # only rank 0 writes files
        with write_failures(out / "config.yaml"):
            out.mkdir(parents=True, exist_ok=True)
            save_config(given, out / "config.yaml")
    manifest = load_manifest(cfg["data_dir"])
    shm = check_shared_memory(cfg, world_size=world.size)  # one line, before any worker starts, if it cannot fit
    if world.is_main:
        print(shm["line"])
    train_ds, n_train = create_dataset(cfg, "train", **world.shard)
    steps = train_ds.get_dataset_size()
    if steps == 0:
        raise ValueError(f"{cfg['data_dir']}: {n_train} training samples per device < the {device_rows(cfg)} rows "
                         f"a device trains per update ({layout.line()})")
    eval_ds, n_eval = create_dataset(cfg, "eval", **world.shard)  # every rank evaluates its slice
    n_eval_all = manifest["splits"]["eval"]["count"]
    run = run_signature(cfg, manifest, steps)
    net, step, lr = build_training(cfg, steps, manifest, world)
    eval_net = build_eval_net(cfg, manifest["num_classes"])
    start_epoch, best = restore(step, out, resume, run, cfg, world.is_main, world.rank)
    if start_epoch >= cfg["epoch_size"] and (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())  # finished before: nothing to do
    a, sunk = cfg["align"], sink_mode(cfg)
    if world.is_main:
        print(f"layout: {layout.line()}, lr {scaled_lr(cfg, world):g}"
              + (f" (= {cfg['lr']:g} x {layout.global_batch}/{cfg['lr_base_batch']})" if cfg["lr_base_batch"] else "")
              + (", negatives over the global batch (gradient caching)" if a["negatives"] == "global" else ""))
        print(f"train {cfg['model']} on {manifest['dataset']}: {n_train} images per device, {steps} updates/epoch, "
              f"{world.size} device(s), lambda {a['lambda']}, tau {a['tau']}, loss {a['loss']}, projector {a['projector']}, "
              f"eval {n_eval_all} images" + (f" ({n_eval} on this rank)" if world.distributed else "") + ", "
              f"data {'sunk' if sunk and cfg['device_target'] != 'CPU' else 'fed from Python'}, "
              f"amp {cfg['amp_level']}, loss scale {cfg['loss_scale_type']}"
              + (f" {cfg['loss_scale']:g}" if cfg["loss_scale_type"] != "none" else "") +
              f", jit_level {jit_level_of(step)}, train images to the device as "
              f"{'uint8 (normalised there)' if device_input.normalize_on_device(cfg) else 'float32'}")

    # the epoch loop (mindspore.train.Model) and the end-of-epoch actions (callbacks.py)
    end_of_epoch = EndOfEpoch(cfg, step, net, lr, eval_ds, eval_net, world, out, best, run)
    bar = ProgressBar(step, steps, cfg["epoch_size"], cfg["log_every"], enabled=world.is_main)
    t_start = time.time()
    if start_epoch < cfg["epoch_size"]:
        if start_epoch:  # a resumed run continues the same sequence of epochs
            ds.config.set_fast_recovery(not cfg["exact_resume"])
            if not resume_pipeline_at(train_ds, start_epoch * steps) and world.is_main:
                print(f"warning: MindSpore {ms.__version__} has no Dataset.set_init_step: the resumed run reads the "
                      f"data in a new order (training is still correct)")
            elif cfg["exact_resume"] and world.is_main:
                print(f"replaying the input pipeline of epochs 1-{start_epoch} (exact_resume: true)")
        with pipeline_errors("train", cfg["data_dir"]):
            try:
                Model(step).train(cfg["epoch_size"], train_ds, callbacks=[bar, end_of_epoch], dataset_sink_mode=sunk,
                                  initial_epoch=start_epoch)
            finally:
                bar.close()

    last_eval = end_of_epoch.last_eval
    summary = {"model": cfg["model"], "lambda": a["lambda"], "epochs": cfg["epoch_size"], "devices": world.size,
               "layout": layout.as_dict(), "lr": scaled_lr(cfg, world),
               "train_images": n_train * world.size, "eval_images": n_eval_all,
               # the reported top-1 (report_top1; its weights: reported_weights), then both models'
               "reported": last_eval["reported"] if last_eval else None,
               "reported_weights": last_eval["reported_weights"] if last_eval else None,
               "final_top1": last_eval["reported_top1"] if last_eval else None,
               "final_top5": last_eval["reported_top5"] if last_eval else None, "best_top1": end_of_epoch.best,
               "final_top1_raw": last_eval["top1"] if last_eval else None,
               "final_top1_ema": last_eval.get("top1_ema") if last_eval else None,
               "wall_time_s": time.time() - t_start,
               "train_images_per_s": steady_images_per_s(end_of_epoch.records)}
    if world.is_main:
        write_json_atomic(out / "summary.json", summary)
    return summary
