"""The torch side of tests/test_fidelity_schedule.py (torch and mindspore never share a process).

Reads one JSON request on stdin, writes one JSON answer on stdout:
  {"schedules": {key: spec}}   -> per-step lr of the reference scheduler, stepped as its training loop does
  {"decay": {key: spec}}       -> the names timm 0.3.2's add_weight_decay puts in its no-decay group
  {"ema": spec}                -> timm 0.3.2 ModelEma's weights after each update of a weight sequence
Each spec names its reference; what each one reproduces is in the function's docstring.
"""
import json
import sys

import torch

from timm_reference import module


def _optimizer(lr: float):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def torch_cosine_per_epoch(s):
    """torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min), `scheduler.step()` after
    each epoch: the GPT4Image authors' resnet/main.py (T_max = args.epochs, eta_min 1e-5) and the
    PyTorch CIFAR recipe (kuangliu/pytorch-cifar main.py: T_max 200, eta_min 0)."""
    opt = _optimizer(s["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, s["t_max"], eta_min=s["eta_min"])
    out = []
    for _ in range(s["epochs"]):
        out += [opt.param_groups[0]["lr"]] * s["steps_per_epoch"]
        opt.step()
        sched.step()
    return out


def timm_deit(s):
    """timm 0.3.2 scheduler.create_scheduler (sched cosine) as DeiT's main.py builds and steps it:
    CosineLRScheduler(t_initial=epochs, lr_min, decay_rate, warmup_lr_init, warmup_t, cycle_limit 1,
    t_in_epochs); the loop trains epoch `epoch` at the optimizer's current lr, then calls
    `lr_scheduler.step(epoch)`. The scheduler's 310-epoch cycle length (cooldown 10) is discarded by
    DeiT (`lr_scheduler, _ = create_scheduler(...)`; the loop runs args.epochs = 300)."""
    opt = _optimizer(s["lr"])
    sched = module("scheduler.cosine_lr").CosineLRScheduler(
        opt, t_initial=s["epochs"], t_mul=1.0, lr_min=s["min_lr"], decay_rate=s["decay_rate"],
        warmup_lr_init=s["warmup_lr"], warmup_t=s["warmup_epochs"], cycle_limit=1, t_in_epochs=True,
        noise_range_t=None)
    out = []
    for epoch in range(s["epochs"]):
        out += [opt.param_groups[0]["lr"]] * s["steps_per_epoch"]
        opt.step()
        sched.step(epoch)
    return out


def hiera_v020(s):
    """Hiera v0.2.0 hiera/train/config.py make_lr_scheduler, stepped per batch (Lightning interval
    "step"): SequentialLR([LinearLR(max(0, 4e-8), 1, warmup iters), CosineAnnealingLR(rest iters,
    lr * 0)], milestones [warmup iters])."""
    opt = _optimizer(s["lr"])
    spe = s["steps_per_epoch"]
    warm, rest = s["warmup_epochs"] * spe, (s["epochs"] - s["warmup_epochs"]) * spe
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt, [torch.optim.lr_scheduler.LinearLR(opt, 4e-08, 1.0, warm),
              torch.optim.lr_scheduler.CosineAnnealingLR(opt, rest, s["lr"] * 0.0)], [warm])
    out = []
    for _ in range(s["epochs"] * spe):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


SCHEDULES = {"torch_cosine_per_epoch": torch_cosine_per_epoch, "timm_deit": timm_deit, "hiera_v020": hiera_v020}


class _Mirror(torch.nn.Module):
    """A torch module whose named_parameters() are the given (name, shape)s (meta tensors: no memory)."""

    def __init__(self, shapes, skip=()):
        super().__init__()
        self._skip = set(skip)
        for name, shape in shapes.items():
            owner = self
            *path, leaf = name.split(".")
            for part in path:
                if part not in owner._modules:
                    owner.add_module(part, torch.nn.Module())
                owner = owner._modules[part]
            owner.register_parameter(leaf, torch.nn.Parameter(torch.empty(shape, device="meta")))

    def no_weight_decay(self):
        return self._skip


def timm_no_decay(s):
    """timm 0.3.2 optim_factory.add_weight_decay(model, wd, skip_list=model.no_weight_decay()) as
    create_optimizer calls it (filter_bias_and_bn): the names of its weight_decay 0 group."""
    model = _Mirror(s["shapes"], s["skip"])
    groups = module("optim.optim_factory").add_weight_decay(model, 0.05, model.no_weight_decay())
    ids = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def timm_ema(s):
    """timm 0.3.2 utils.model_ema.ModelEma(model, decay): created from the initial weights, `update(model)`
    after each optimizer step; returns the EMA weights after each update."""
    model = _Mirror({k: [len(v)] for k, v in s["initial"].items()})
    model = model.to_empty(device="cpu").double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.tensor(s["initial"][n], dtype=torch.float64))
    ema = module("utils.model_ema").ModelEma(model, decay=s["decay"], device="")
    out = []
    for weights in s["updates"]:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(torch.tensor(weights[n], dtype=torch.float64))
        ema.update(model)
        out.append({n: p.tolist() for n, p in ema.ema.named_parameters()})
    return out


def main():
    request = json.load(sys.stdin)
    answer = {"schedules": {k: SCHEDULES[s["reference"]](s) for k, s in request.get("schedules", {}).items()},
              "decay": {k: timm_no_decay(s) for k, s in request.get("decay", {}).items()},
              "ema": {k: timm_ema(s) for k, s in request.get("ema", {}).items()}}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
