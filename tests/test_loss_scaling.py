"""Loss scaling and skipped updates (engine.TrainStep, train.loss_scale_sense): under none, fixed and
dynamic scaling an update whose gradients are not finite is skipped (weights, optimizer state and EMA
untouched), counted in the log, the dynamic scale halves and the fixed one stays, and the lr schedule
still advances by one step, as timm's and torch's loops step it whether or not GradScaler skipped.
The order of the step's side effects is explicit: graph mode compiles it without MindSpore's "side
effect nodes were eliminated" warning, and its counters equal the steps run."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

from conftest import run_cli
from ms_gpt4image.checkpoint import LOG_PREFIX
from ms_gpt4image.config import load_config
from ms_gpt4image.engine import NetWithLoss, TrainStep
from ms_gpt4image.gpt4image import GPT4ImageNet
from ms_gpt4image.losses import GPT4ImageLoss
from ms_gpt4image.models import create_backbone
from ms_gpt4image.train import loss_scale_sense

ROOT = Path(__file__).resolve().parents[1]
SCALES = {"none": 1.0, "fixed": 1024.0, "dynamic": 1024.0}
LRS = [0.1, 0.05, 0.02, 0.01]


class GradInjector(nn.Cell):
    """Identity on x; the backward multiplies x's gradient by inf where `flag` is 1: a non-finite
    gradient at a chosen step, with a finite loss (a bprop may not read a Parameter in graph mode, so
    the flag comes with the batch)."""

    def construct(self, x, flag):
        return x

    def bprop(self, x, flag, out, dout):
        factor = ops.select(flag > 0, ops.fill(ms.float32, (), float("inf")), ops.fill(ms.float32, (), 1.0))
        return dout * factor, ops.zeros_like(flag)


class Injected(nn.Cell):
    """The GPT4Image net with the injector on its logits, flagged by a pixel value of 1000 (batch(inject))."""

    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net, self.inject = net, GradInjector()

    def construct(self, x):
        logits, proj = self.net(x)
        return self.inject(logits, ops.cast(x[0, 0, 0, 0] > 100, ms.float32)), proj


def batch(inject=False):
    rng = np.random.default_rng(0)
    t = rng.normal(size=(4, 16)).astype(np.float32)
    image = rng.normal(size=(4, 3, 16, 16)).astype(np.float32)
    image[0, 0, 0, 0] = 1000.0 if inject else image[0, 0, 0, 0]
    return (ms.Tensor(image), ms.Tensor(np.arange(4, dtype=np.int32)), ms.Tensor(t / np.linalg.norm(t, axis=1, keepdims=True)))


def build_step(kind, ema=0.0, lrs=LRS):
    """Plain SGD on a per-step lr list, so that the lr each update used can be read off the weights."""
    ms.set_seed(0)
    net = Injected(GPT4ImageNet(create_backbone("simple_cnn", num_classes=10, width=4), 16))
    cfg = load_config(overrides=[f"loss_scale_type={kind}", f"loss_scale={SCALES[kind]}"])
    opt = nn.SGD(net.net.trainable_params(), learning_rate=ms.Tensor(np.array(lrs, np.float32)))
    step = TrainStep(NetWithLoss(net, GPT4ImageLoss(0.3)), opt, loss_scale_sense(cfg), ema_decay=ema)
    step.set_train(True)
    return net, step


def _state(step):
    """Weights, optimizer state and EMA (not the counters, the lr list or the loss-scale cell's state)."""
    scaler = {p.name for p in step.loss_scaling_manager.get_parameters()}
    return {p.name: p.asnumpy().copy() for p in step.get_parameters() if not p.name.startswith(LOG_PREFIX)
            and p.name not in scaler | {"scale_sense", "global_step", "learning_rate"}}


@pytest.mark.parametrize("ema", [0.0, 0.9])
@pytest.mark.parametrize("kind", list(SCALES))
def test_a_non_finite_gradient_skips_the_update_and_the_schedule_moves_on(kind, ema):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net, step = build_step(kind, ema)
    initial = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    step(*batch())
    before = _state(step)
    step(*batch(inject=True))  # step 2: every gradient non-finite, the loss finite
    after = _state(step)
    for k in before:  # weights, EMA weights and counters untouched by the skipped step
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    want_scale = SCALES[kind] / 2 if kind == "dynamic" else SCALES[kind]
    assert float(step.scale_sense.asnumpy()) == want_scale
    step(*batch())
    log = step.read_log()
    assert (log["steps"], log["skipped_steps"], log["first_nonfinite_step"]) == (3, 1, 0)
    assert int(step.optimizer.global_step.asnumpy().reshape(-1)[0]) == 3  # the schedule's index: steps run
    if ema:
        assert float(step.ema_updates.asnumpy()) == 2  # once per applied update
    # the third step used the schedule's third lr: the same as a run whose second lr is LRS[2]
    ref_net, ref = build_step(kind, ema, lrs=[LRS[0], LRS[2], LRS[3]])
    for p in ref_net.get_parameters():  # the same start, whatever the seed gave
        p.set_data(ms.Tensor(initial[p.name]))
    for p in ref.ema_weights if ema else ():
        p.set_data(ms.Tensor(initial[p.name[len("ema."):]]))
    ref(*batch())
    ref(*batch())
    got, want = _state(step), _state(ref)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)
        assert np.isfinite(got[k]).all(), k


def test_graph_mode_counts_every_step_and_drops_no_side_effect():
    proc = run_cli(ROOT / "tests" / "skip_steps.py")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 6
    for r in rows:
        assert (r["steps"], r["skipped"], r["optimizer_step"]) == (3, 1, 3), r
        assert r["ema_updates"] in (None, 2.0), r
    assert "side effect nodes were eliminated" not in proc.stderr


def test_fixed_scale_overflow_through_the_command_line_skips_every_update_and_stops(packed, tmp_path):
    """Every update overflows (fixed scale 3e38, the backward in float16 at amp O2): today's main wrote 126
    non-finite tensors to last.ckpt and exited 0. Now every update is skipped, and an epoch that applied
    none stops the run with one line; nothing is saved from it."""
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_dir: {packed / 'data'}\noutput_dir: {out}\nmodel_kwargs: {{width: 8}}\nema: true\n"
                   "batch_size: 16\neval_batch_size: 16\nepoch_size: 1\nwarmup_epochs: 0\n"
                   "loss_scale_type: fixed\nloss_scale: 3.0e+38\namp_level: O2\n")
    proc = run_cli("-m", "ms_gpt4image", "train", "-c", cfg, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error: epoch 1: all 5 updates skipped (non-finite gradients at loss scale 3e+38" in proc.stderr
    assert not (out / "last.ckpt").exists()


def test_an_epoch_with_some_skipped_updates_logs_them_and_goes_on(tmp_path):
    """A skip is logged (skipped_steps, loss_scale in log.jsonl, a line on stdout); the run continues."""
    from ms_gpt4image.callbacks import EndOfEpoch
    from ms_gpt4image.distributed import World

    class Step:
        def read_log(self):
            return {"loss": 1.0, "ce": 1.0, "align": 1.0, "steps": 5, "skipped_steps": 2, "loss_scale": 512.0,
                    "first_nonfinite_step": 0}

    cfg = load_config(overrides=["loss_scale_type=dynamic"])
    end = EndOfEpoch(cfg, Step(), None, [0.1] * 5, None, None, World(), tmp_path, -1.0, {})
    assert end._losses(3, 5) == {"loss": 1.0, "ce": 1.0, "align": 1.0, "skipped_steps": 2, "loss_scale": 512.0}
