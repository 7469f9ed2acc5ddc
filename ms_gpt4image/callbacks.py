"""What `train` does around `mindspore.train.Model.train`: a progress bar, and the end-of-epoch
actions (read the losses, evaluate, log, checkpoint, stop), as Model callbacks.

Within an epoch nothing waits for the host: the train step keeps its running losses on the device
(engine.TrainStep.read_log). They are read once per epoch, and every `log_every` steps for the
progress bar when the run is not sunk.
"""
import json
import time
from pathlib import Path
from typing import Dict, Optional

import mindspore as ms
from mindspore.train import Callback
from tqdm import tqdm

from .batch_layout import device_rows
from .checkpoint import save_train_state, saved_epoch
from .data import pipeline_errors
from .distributed import World, all_reduce_sum
from .engine import evaluate
from .files import append_line


class ProgressBar(Callback):
    def __init__(self, step, steps_per_epoch: int, epochs: int, log_every: int, enabled: bool):
        self.step, self.steps, self.epochs, self.log_every, self.enabled = step, steps_per_epoch, epochs, log_every, enabled
        self.bar = None

    def on_train_epoch_begin(self, run_context):
        if self.enabled:
            epoch = run_context.original_args().cur_epoch_num
            self.bar = tqdm(total=self.steps, desc=f"epoch {epoch}/{self.epochs}", unit="step", leave=False)

    def on_train_step_end(self, run_context):
        if self.bar is None:
            return
        if run_context.original_args().dataset_sink_mode:  # one call per sunk epoch
            self.bar.update(self.steps - self.bar.n)
            return
        self.bar.update(1)
        if self.bar.n % self.log_every == 0:
            log = self.step.read_log(reset=False)
            self.bar.set_postfix(ce=f"{log['ce']:.3f}", align=f"{log['align']:.3f}")

    def on_train_epoch_end(self, run_context):
        self.close()

    def close(self):
        """Also called when training stops inside an epoch (an error, an interruption)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EndOfEpoch(Callback):
    """After each epoch, in order:
    1. the epoch's mean losses, over all ranks; a non-finite loss stops the run, naming the step;
    2. evaluation when due (each rank its slice of the eval set): the raw weights (`top1`, `top5`) and,
       with `ema`, the EMA weights (`top1_ema`, `top5_ema`), each copied into the one evaluation net
       (`eval_net`, built at the recipe's precision): both at one precision, through one compiled graph;
    3. rank 0: one line of log.jsonl and stdout, then last.ckpt, best.ckpt (by the `report_top1`
       top-1, `reported_top1`) and epoch_N.ckpt;
    4. a stop request at `stop_at_epoch` (the run resumes from last.ckpt)."""

    def __init__(self, cfg: Dict, step, net, lr, eval_ds, eval_net, world: World, out: Path, best: float, run: Dict):
        self.cfg, self.step, self.net, self.lr, self.eval_ds, self.eval_net = cfg, step, net, lr, eval_ds, eval_net
        self.world, self.out, self.best, self.run = world, out, best, run
        self.records, self.last_eval, self.t_epoch = [], None, 0.0
        # the epoch last.ckpt holds (named when a later save fails)
        self.saved_epoch = saved_epoch(out / "last.ckpt") if world.is_main and (out / "last.ckpt").exists() else None

    def on_train_epoch_begin(self, run_context):
        self.t_epoch = time.time()

    def on_train_epoch_end(self, run_context):
        cb = run_context.original_args()
        epoch, steps = cb.cur_epoch_num, cb.batch_num
        epoch_time = time.time() - self.t_epoch
        record = {"epoch": epoch, **self._losses(epoch, steps), "lr": float(self.lr[min(epoch * steps, len(self.lr)) - 1]),
                  "epoch_time_s": epoch_time,
                  "images_per_s": steps * device_rows(self.cfg) * self.world.size / epoch_time}
        if self._eval_due(epoch):
            with pipeline_errors("eval", self.cfg["data_dir"]):
                record.update(self._evaluate())
        self.records.append(record)
        if self.world.is_main:
            self._write(record)
        if self.cfg["stop_at_epoch"] and epoch >= self.cfg["stop_at_epoch"] and epoch < self.cfg["epoch_size"]:
            if self.world.is_main:
                print(f"stopping after epoch {epoch} (stop_at_epoch); continue with --resume")
            run_context.request_stop()

    def _losses(self, epoch: int, steps: int) -> Dict:
        log = self.step.read_log()
        n = log["steps"]
        bad = log["first_nonfinite_step"]
        total = all_reduce_sum([log["loss"] * n, log["ce"] * n, log["align"] * n, n, bad > 0], self.world)
        if total[4]:
            where = f"first at step {bad} of {steps}" if bad else "on another rank"
            raise FloatingPointError(f"epoch {epoch}: non-finite loss ({where}); lower lr, check the data "
                                     f"(python -m export verify) or use loss_scale_type: dynamic")
        # the gradients are all-reduced before the overflow check: every rank skips the same updates
        skipped = log["skipped_steps"]
        if skipped and skipped == n:  # nothing learned this epoch: diverged, or a scale that cannot work
            raise FloatingPointError(
                f"epoch {epoch}: all {n} updates skipped (non-finite gradients at loss scale {log['loss_scale']:g}, "
                f"loss_scale_type {self.cfg['loss_scale_type']}); the weights are still epoch {epoch - 1}'s: lower lr, "
                f"check the data (python -m export verify), or with amp_level {self.cfg['amp_level']} use "
                f"loss_scale_type: dynamic")
        if skipped and self.world.is_main:
            print(f"epoch {epoch}: {skipped} of {n} updates skipped (non-finite gradients; loss scale now "
                  f"{log['loss_scale']:g}, loss_scale_type {self.cfg['loss_scale_type']})")
        return {"loss": total[0] / total[3], "ce": total[1] / total[3], "align": total[2] / total[3],
                "skipped_steps": skipped, "loss_scale": log["loss_scale"]}

    def _eval_due(self, epoch: int) -> bool:
        every = self.cfg["eval_every"]
        return epoch == self.cfg["epoch_size"] or bool(every and epoch % every == 0)

    def _evaluate(self) -> Dict:
        copy_weights(self.net.backbone.get_parameters(), "backbone.", self.eval_net)
        raw = evaluate(self.eval_net, self.eval_ds, self.world)
        scores = {"top1": raw["top1"], "top5": raw["top5"]}
        if self.step.use_ema:
            copy_weights(self.step.ema_weights, "ema.backbone.", self.eval_net)
            ema = evaluate(self.eval_net, self.eval_ds, self.world)
            scores.update(top1_ema=ema["top1"], top5_ema=ema["top5"])
        self.last_eval = dict(scores, **reported_scores(self.cfg, scores))
        self.step.set_train(True)  # Model keeps its own note of the mode and would not restore it
        return scores

    def _write(self, record: Dict) -> None:
        """The log line, then the checkpoints. A failed write (full disk) stops the run with one line
        naming the file; every file is written whole or not at all, so last.ckpt still holds the
        previous epoch (the log is cut back to it on --resume)."""
        epoch, last = record["epoch"], self.out / "last.ckpt"
        kept = (f"{last} still holds epoch {self.saved_epoch}; free space and continue with --resume"
                if self.saved_epoch else "no checkpoint was kept")
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}))
        append_line(self.out / "log.jsonl", json.dumps(record))
        score = reported_scores(self.cfg, record)["reported_top1"] if "top1" in record else None
        if score is not None and score > self.best:
            self.best = score
            save_train_state(self.step, self.out / "best.ckpt", epoch, self.best, self.run, kept)
        save_train_state(self.step, last, epoch, self.best, self.run, kept)
        self.saved_epoch = epoch
        if self.cfg["save_every"] and epoch % self.cfg["save_every"] == 0:
            save_train_state(self.step, self.out / f"epoch_{epoch}.ckpt", epoch, self.best, self.run,
                             f"{last} holds epoch {epoch}; continue with --resume")


def reported_scores(cfg: Dict, scores: Dict) -> Dict:
    """The top-1 a run reports (summary.json, best.ckpt), by `report_top1`: raw, ema or max of the two
    (without EMA weights: raw). {reported: raw|ema|max, reported_weights: raw|ema (whose scores they
    are), reported_top1, reported_top5}."""
    kind = cfg["report_top1"] if "top1_ema" in scores else "raw"
    ema = kind == "ema" or kind == "max" and scores["top1_ema"] > scores["top1"]
    return {"reported": kind, "reported_weights": "ema" if ema else "raw",
            "reported_top1": scores["top1_ema" if ema else "top1"], "reported_top5": scores["top5_ema" if ema else "top5"]}


def copy_weights(params, prefix: str, backbone) -> None:
    """The train step's weights named `prefix` + name (`backbone.` raw, `ema.backbone.` EMA) -> the
    evaluation backbone's parameters of the same names (a copy: training moves them on)."""
    source = {p.name[len(prefix):]: p for p in params if p.name.startswith(prefix)}
    for p in backbone.get_parameters():
        p.set_data(ms.Tensor(source[p.name].asnumpy()))


def steady_images_per_s(records) -> Optional[float]:
    """Median epoch throughput, leaving out the first epoch of the run (it compiles the graph)."""
    rates = sorted(r["images_per_s"] for r in (records[1:] or records))
    return rates[len(rates) // 2] if rates else None
