"""How a run reaches its global batch: devices x micro-batch per device x accumulated micro-batches.

A recipe's lr, schedule and EMA decay were tuned for one global batch (ConvNeXt 4096, DeiT and Hiera
1024, ...). `global_batch` states it; `resolve` then derives the layout from the world size, so that a
run on 4, 8 or 16 cards trains the reference's recipe, as ConvNeXt's single-machine command reaches
4096 on 8 GPUs with `--update_freq 4`:

* the rows a device contributes per update are global_batch / devices (a world size that does not
  divide the global batch is refused, naming the nearest layouts that work);
* they are cut into micro-batches of at most `batch_size` (the per-device batch the recipe was tuned
  with) and `max_device_batch` (a smaller card): the largest such divisor, the rest accumulated
  (`accumulate_steps`, engine.TrainStep);
* `accumulate_steps` given explicitly must agree with the global batch.

Without `global_batch` the layout is the config's: batch_size per device, accumulate_steps (default 1),
and the global batch whatever they and the world size make (the demo's and CIFAR's single-device
recipes).
"""
import itertools
from dataclasses import dataclass
from typing import Dict, List, Optional

from .config import ConfigError


@dataclass(frozen=True)
class Layout:
    devices: int
    micro_batch: int   # rows per forward on one device
    accumulate: int    # micro-batches per optimizer update

    @property
    def device_rows(self) -> int:
        """Rows one device trains per update (the training pipeline's batch)."""
        return self.micro_batch * self.accumulate

    @property
    def global_batch(self) -> int:
        return self.devices * self.device_rows

    def line(self) -> str:
        return (f"{self.devices} device(s) x {self.micro_batch} per device x {self.accumulate} accumulated "
                f"= global batch {self.global_batch}")

    def as_dict(self) -> Dict[str, int]:
        return {"devices": self.devices, "micro_batch": self.micro_batch, "accumulate_steps": self.accumulate,
                "global_batch": self.global_batch}


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def _cap(cfg: Dict) -> int:
    return min(cfg["batch_size"], cfg["max_device_batch"] or cfg["batch_size"])


def _split(devices: int, rows: int, cap: int) -> Layout:
    micro = _largest_divisor(rows, cap)
    return Layout(devices, micro, rows // micro)


def nearest_layouts(global_batch: int, devices: int, cap: int) -> List[str]:
    """The nearest device counts below and above `devices` that divide `global_batch`, with their layouts."""
    below = [d for d in range(devices - 1, 0, -1) if global_batch % d == 0][:1]
    above = [next(d for d in itertools.count(devices + 1) if global_batch % d == 0)]  # global_batch itself at most
    return [_split(d, global_batch // d, cap).line() for d in below + above]


def nearest_global_batches(global_batch: int, devices: int, micro: int) -> List[str]:
    """The global batches `devices` can make at this micro-batch around `global_batch`."""
    n = global_batch / (devices * micro)
    out = []
    for k in sorted({max(int(n), 1), int(n) + 1}):
        out.append(f"--set global_batch={devices * micro * k} ({Layout(devices, micro, k).line()})")
    return out


def resolve(cfg: Dict, devices: int) -> Layout:
    """The run's layout on `devices` (module docstring); a ConfigError names what cannot work."""
    layout = _resolve(cfg, devices)
    a = cfg["align"]
    rows = layout.micro_batch if a["negatives"] == "local" else layout.global_batch  # where negatives come from
    if rows < 2 and a["lambda"] > 0 and a["loss"] != "cosine":
        raise ConfigError(f"{layout.line()}: contrastive alignment (align.loss {a['loss']}, negatives {a['negatives']}) "
                          f"sees batches of 1, without negatives; raise global_batch, batch_size or max_device_batch"
                          + (", or set align.negatives: global" if layout.global_batch > 1 else ""))
    return layout


def _resolve(cfg: Dict, devices: int) -> Layout:
    cap, given = _cap(cfg), cfg["accumulate_steps"]
    target = cfg["global_batch"]
    if target is None:  # the config's batch_size x accumulate_steps rows, cut smaller under max_device_batch
        return _split(devices, cfg["batch_size"] * (given or 1), cap)
    if target % devices:
        raise ConfigError(
            f"global_batch = {target} cannot be split over {devices} device(s): the nearest layouts are "
            f"{'; '.join(nearest_layouts(target, devices, cap))}; or keep {devices} device(s) with "
            f"{' or '.join(nearest_global_batches(target, devices, cap))} (the lr then scales with lr_base_batch)")
    rows = target // devices
    if given is not None:
        if rows % given or rows // given > cap:
            raise ConfigError(
                f"accumulate_steps = {given} does not make global_batch = {target} on {devices} device(s): "
                f"{rows} rows per device in micro-batches of at most {cap} need accumulate_steps = "
                f"{_split(devices, rows, cap).accumulate} (or leave accumulate_steps unset to derive it)")
        return Layout(devices, rows // given, given)
    return _split(devices, rows, cap)


def apply(cfg: Dict, layout: Layout) -> Dict:
    """The config as the run trains it: `batch_size` the micro-batch, `accumulate_steps` an integer."""
    return dict(cfg, batch_size=layout.micro_batch, accumulate_steps=layout.accumulate,
                global_batch=layout.global_batch)


def device_rows(cfg: Dict) -> int:
    """Rows per device per update of a config (its training pipeline's batch)."""
    return cfg["batch_size"] * (cfg["accumulate_steps"] or 1)
