"""The per-step learning rate of a run (a list: MindSpore optimizers index it by their step).

mindcv's `create_scheduler` (warmup and cosine recomputed every step, the cosine spanning the epochs
after the warmup) is used as it is where the config asks for nothing else. The other forms are those of
the reference implementations the recipes follow (tests/test_fidelity_schedule.py checks each):

* `lr_step: epoch`: the lr is computed per epoch and held within it, as in references that call
  `scheduler.step()` once per epoch (torch's CosineAnnealingLR in the PyTorch ImageNet example and the
  GPT4Image authors' ResNet code; timm's CosineLRScheduler in DeiT).
* `lr_epoch_lag: 1`: DeiT calls timm's `scheduler.step(epoch)` after epoch `epoch`, which sets the rate
  of the next epoch to the schedule's value at `epoch`: epoch e trains at value(e - 1), and epochs 0 and
  1 both at the warmup's start.
* `cosine_from: start`: the cosine's clock starts at the first step and spans the whole run, the warmup
  replacing its first part (timm 0.3.2's CosineLRScheduler without warmup_prefix, t_initial = epochs);
  `warmup_end` (mindcv, ConvNeXt, Hiera) starts it after the warmup and spans the rest.
* `warmup_lr`: the warmup's first rate as an absolute value (timm's --warmup-lr), not scaled with the
  batch as `lr * warmup_factor` is.
* `warmup_to_peak: true`: the warmup's last step is at the peak rate (np.linspace(start, lr, n), as
  ConvNeXt's utils.cosine_scheduler); false: it stops one step short (torch LinearLR, timm, mindcv).
"""
import math
from typing import Dict, List

from mindcv.scheduler import create_scheduler


def uses_mindcv(cfg: Dict) -> bool:
    return (cfg["lr_step"] == "step" and cfg["warmup_lr"] is None and not cfg["warmup_to_peak"]
            and cfg["cosine_from"] == "warmup_end" and cfg["lr_epoch_lag"] == 0)


def lr_schedule(cfg: Dict, steps_per_epoch: int, lr: float) -> List[float]:
    """Per-step rates for `epoch_size` epochs of `steps_per_epoch` steps, peaking at `lr`."""
    epochs, warmup = cfg["epoch_size"], cfg["warmup_epochs"]
    if uses_mindcv(cfg):
        return create_scheduler(steps_per_epoch, scheduler=cfg["scheduler"], lr=lr, min_lr=cfg["min_lr"],
                                warmup_epochs=warmup, warmup_factor=cfg["warmup_factor"],
                                decay_epochs=epochs - warmup, num_epochs=epochs)
    per_epoch = cfg["lr_step"] == "epoch"
    ticks, warm = (epochs, warmup) if per_epoch else (epochs * steps_per_epoch, warmup * steps_per_epoch)
    values = [_value(cfg, t, ticks, warm, lr) for t in range(ticks)]
    if not per_epoch:
        return values
    lag = cfg["lr_epoch_lag"]
    return [values[max(e - lag, 0)] for e in range(epochs) for _ in range(steps_per_epoch)]


def _value(cfg: Dict, t: int, ticks: int, warm: int, lr: float) -> float:
    if t < warm:
        start = cfg["warmup_lr"] if cfg["warmup_lr"] is not None else lr * cfg["warmup_factor"]
        span = warm - 1 if cfg["warmup_to_peak"] else warm
        return start + (lr - start) * t / span if span > 0 else start
    if cfg["scheduler"] == "constant":
        return lr
    t, span = (t, ticks) if cfg["cosine_from"] == "start" else (t - warm, ticks - warm)
    low = cfg["min_lr"]
    return low + 0.5 * (lr - low) * (1 + math.cos(math.pi * t / span))
