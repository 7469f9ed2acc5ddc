"""Gradient accumulation (`accumulate_steps`, engine.TrainStep), the global batch as a recipe's invariant
(batch_layout.py), gradient caching (`align.negatives: global`) and `recompute`, in graph mode on CPU."""
import json

import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from conftest import run_cli, run_cli_concurrently, simple_cnn_config
from ms_gpt4image.batch_layout import Layout, resolve
from ms_gpt4image.config import ConfigError, load_config
from ms_gpt4image.data import PerMicroBatch
from ms_gpt4image.engine import NetWithLoss, TrainStep
from ms_gpt4image.gpt4image import GPT4ImageNet
from ms_gpt4image.losses import GPT4ImageLoss
from ms_gpt4image.models import create_backbone, recompute_blocks

MS_MODE = ms.GRAPH_MODE  # set around each test by conftest._ms_mode
ROWS, DIM, LRS = 8, 16, [0.5, 0.25, 0.1]


def _batch(rows=ROWS, size=16, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(rows, DIM)).astype(np.float32)
    return (ms.Tensor(rng.normal(size=(rows, 3, size, size)).astype(np.float32)),
            ms.Tensor(rng.integers(0, 10, rows).astype(np.int32)),
            ms.Tensor(t / np.linalg.norm(t, axis=1, keepdims=True)))


def _net(model="simple_cnn"):
    ms.set_seed(0)
    net = GPT4ImageNet(create_backbone(model, num_classes=10, width=4),
                       DIM, "linear" if model == "simple_cnn" else "mlp")
    for p in net.get_parameters():  # materialised now: every net starts from the same weights
        p.init_data()
    return net


def _step(net, kind="infonce", accumulate=1, negatives="local", ema=0.5, lrs=LRS, clip=0.0, scale=None):
    opt = nn.Momentum(net.trainable_params(), lrs, 0.9)
    step = TrainStep(NetWithLoss(net, GPT4ImageLoss(0.3, kind)), opt, scale, ema_decay=ema, clip_grad_norm=clip,
                     accumulate_steps=accumulate, global_negatives=negatives == "global")
    step.set_train(True)
    return step


def _state(step):
    return {p.name: p.asnumpy().copy() for p in step.get_parameters() if not p.name.startswith("_log.")}


@pytest.mark.parametrize("kind,negatives,clip", [("cosine", "local", 0.0), ("cosine", "local", 0.05),
                                                 ("infonce", "global", 0.0), ("clip", "global", 0.0)])
def test_micro_batches_equal_one_batch_of_their_rows(kind, negatives, clip):
    """2 micro-batches of 4 = one batch of 8 after 3 updates: weights, momentum, EMA, the lr index, the
    EMA's count and the logged losses. Exact where no loss term couples the micro-batches: cosine has no
    negatives, and `global` takes them from the whole batch (gradient caching). Clipping (0.05 clips
    every update here) applies to the summed gradient, as ConvNeXt's loss scaler clips once per update."""
    batches = [_batch(seed=s) for s in range(3)]
    ref, got = _step(_net(), kind, clip=clip), _step(_net(), kind, accumulate=2, negatives=negatives, clip=clip)
    for b in batches:
        ref(*b), got(*b)
    want, have = _state(ref), _state(got)
    assert want.keys() == have.keys()
    for k in want:
        np.testing.assert_allclose(have[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert got.optimizer.global_step.asnumpy().item() == 3 and got.ema_updates.asnumpy().item() == 3
    log_ref, log_got = ref.read_log(), got.read_log()
    assert log_got["steps"] == 3
    for key in ("loss", "ce", "align"):
        assert log_got[key] == pytest.approx(log_ref[key], rel=1e-5), key


def test_an_overflow_in_one_micro_batch_skips_the_whole_update():
    """The overflow check runs on the summed gradient: a non-finite micro-batch skips the update (weights,
    EMA untouched), the dynamic scale halves, the lr index still advances, the skip is logged."""
    net = _net()
    step = _step(net, accumulate=2, scale=nn.DynamicLossScaleUpdateCell(3.0e38, 2, 1000))
    before = _state(step)
    x, y, t = _batch()
    step(x, y, t)
    after = _state(step)
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    # the lr index, the halved scale and the dynamic scale's counters; no weight, moment or EMA
    assert changed == ["current_iterator_step", "global_step", "last_overflow_iterator_step", "scale_sense"]
    assert float(step.scale_sense.asnumpy()) == pytest.approx(1.5e38)
    assert step.optimizer.global_step.asnumpy().item() == 1 and step.read_log()["skipped_steps"] == 1


def _convnext_reference(net, kind, micro_batches, lr):
    """ConvNeXt's train_one_epoch for one update, written out: each micro-batch's loss / update_freq,
    backward (gradients summed), then one optimizer step; BatchNorm sees each micro-batch on its own."""
    opt = nn.Momentum(net.trainable_params(), lr, 0.9)
    net_with_loss = NetWithLoss(net, GPT4ImageLoss(0.3, kind))
    net_with_loss.set_train(True)
    grad_fn = ms.value_and_grad(lambda x, y, t: net_with_loss(x, y, t)[0], None, opt.parameters)
    total, losses = None, []
    for x, y, t in micro_batches:
        loss, grads = grad_fn(x, y, t)
        grads = [g / len(micro_batches) for g in grads]
        total = grads if total is None else [a + g for a, g in zip(total, grads)]
        losses.append(float(loss.asnumpy()))
    opt(tuple(total))
    return float(np.mean(losses))


def test_a_resnet_accumulates_as_convnexts_loop():
    """BatchNorm (ResNet + the authors' MLP projector with BN): the accumulated step equals ConvNeXt's
    loop on the same micro-batches, run eagerly, BatchNorm statistics per micro-batch, to 1e-4 (graph and
    PyNative kernels differ in summation order)."""
    x, y, t = _batch(size=16)
    net = _net("resnet18_cifar")
    step = _step(net, "infonce", accumulate=2, ema=0.0, lrs=0.5)
    loss = float(step(x, y, t)[0].asnumpy())
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        ref = _net("resnet18_cifar")
        ref_loss = _convnext_reference(ref, "infonce", [(x[:4], y[:4], t[:4]), (x[4:], y[4:], t[4:])], 0.5)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    want = {p.name: p.asnumpy() for p in ref.get_parameters()}
    for p in net.get_parameters():  # weights and BatchNorm's running statistics
        np.testing.assert_allclose(p.asnumpy(), want[p.name], rtol=1e-4, atol=1e-5, err_msg=p.name)


def test_gradient_caching_leaves_batchnorm_statistics_as_the_micro_batches_set_them():
    """The features' extra forward (negatives: global) must not move BatchNorm's running statistics: after
    a step they equal those of the same step with local negatives (each micro-batch's forward once)."""
    stats = []
    for negatives in ("local", "global"):
        net = _net("resnet18_cifar")
        _step(net, "infonce", accumulate=2, negatives=negatives, ema=0.0, lrs=0.0)(*_batch())
        stats.append({p.name: p.asnumpy() for p in net.get_parameters() if "moving_" in p.name})
    assert len(stats[0]) > 10
    for k in stats[0]:
        np.testing.assert_array_equal(stats[1][k], stats[0][k], err_msg=k)


def test_recompute_gives_the_same_losses_and_update():
    outs, weights = [], []
    for recompute in (False, True):
        net = _net("resnet18_cifar")
        if recompute:
            assert recompute_blocks(net.backbone) == 8  # the 8 BasicBlocks of a ResNet-18
        step = _step(net, ema=0.0)
        outs.append([float(v.asnumpy()) for v in step(*_batch())])
        weights.append({p.name: p.asnumpy() for p in net.trainable_params()})
    assert outs[1] == pytest.approx(outs[0], rel=1e-6)
    for k in weights[0]:
        np.testing.assert_allclose(weights[1][k], weights[0][k], rtol=1e-5, atol=1e-7, err_msg=k)
    with pytest.raises(ValueError, match="no residual blocks"):
        recompute_blocks(create_backbone("simple_cnn", num_classes=10))


def test_mixup_draws_per_micro_batch():
    calls = []

    def mix(images, labels):
        calls.append(len(images))
        return images * 0 + len(calls), labels
    images, labels = PerMicroBatch(mix, 4)(np.ones((12, 1)), np.zeros(12))
    assert calls == [4, 4, 4] and images[:, 0].tolist() == [1] * 4 + [2] * 4 + [3] * 4


def _layout_cfg(**keys):
    sets = [f"{k}={'null' if v is None else v}" for k, v in keys.items()]
    return load_config(None, sets)


@pytest.mark.parametrize("devices,cap,want", [
    (32, None, (128, 1)), (16, None, (128, 2)), (8, None, (128, 4)), (4, None, (128, 8)),
    (4, 64, (64, 16)), (64, None, (64, 1))])
def test_convnext_reaches_4096_on_any_card_count(devices, cap, want):
    layout = resolve(_layout_cfg(batch_size=128, global_batch=4096, max_device_batch=cap), devices)
    assert (layout.micro_batch, layout.accumulate) == want and layout.global_batch == 4096


def test_layouts_that_cannot_make_the_global_batch_are_refused():
    with pytest.raises(ConfigError) as e:
        resolve(_layout_cfg(batch_size=128, global_batch=4096), 12)
    text = str(e.value)
    assert "12 device(s)" in text and "8 device(s) x 128 per device x 4 accumulated" in text
    assert "16 device(s) x 128 per device x 2 accumulated" in text and "--set global_batch=4608" in text
    with pytest.raises(ConfigError, match="accumulate_steps = 3"):
        resolve(_layout_cfg(batch_size=128, global_batch=1024, accumulate_steps=3), 8)
    # without a global batch the config's layout holds on any world size
    assert resolve(_layout_cfg(batch_size=32, accumulate_steps=2), 3) == Layout(3, 32, 2)
    assert resolve(_layout_cfg(batch_size=32, accumulate_steps=2, max_device_batch=16), 1) == Layout(1, 16, 4)


def _train_cfg(tmp_path, packed, name, **keys):
    return simple_cnn_config(tmp_path, packed, name, model_kwargs={"width": 4}, batch_size=4, accumulate_steps=2,
                             eval_batch_size=16, warmup_epochs=1, ema=True, ema_decay=0.9, **keys)

def test_accumulated_training_resumes_as_an_uninterrupted_run(packed, tmp_path):
    """Through the command line: 80 images at 4 x 2 per update = 10 updates an epoch (ConvNeXt: len(loader)
    // update_freq), the lr of each epoch's last update from the per-update schedule, the layout line and
    summary; a run stopped after epoch 1 and resumed logs what the uninterrupted run logs."""
    full, split = _train_cfg(tmp_path, packed, "full"), _train_cfg(tmp_path, packed, "split", stop_at_epoch=1)
    done = run_cli_concurrently(("-m", "ms_gpt4image", "train", "-c", full),
                                ("-m", "ms_gpt4image", "train", "-c", split))
    assert "layout: 1 device(s) x 4 per device x 2 accumulated = global batch 8" in done[0].stdout
    assert "10 updates/epoch" in done[0].stdout
    run_cli("-m", "ms_gpt4image", "train", "-c", split, "--resume")
    logs = [[json.loads(l) for l in (tmp_path / n / "log.jsonl").read_text().splitlines()] for n in ("full", "split")]
    cfg = load_config(full)
    from ms_gpt4image.schedule import lr_schedule
    lrs = lr_schedule(cfg, 10, cfg["lr"])
    assert [r["lr"] for r in logs[0]] == pytest.approx([lrs[9], lrs[19]])
    for a, b in zip(*logs):
        for key in ("loss", "ce", "align", "lr", "top1", "top1_ema"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["epoch"], key)
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["layout"] == {"devices": 1, "micro_batch": 4, "accumulate_steps": 2, "global_batch": 8}


def test_a_layout_that_cannot_be_made_stops_before_anything_is_written(packed, tmp_path):
    cfg = _train_cfg(tmp_path, packed, "bad", global_batch=12)  # 12 rows = 3 micro-batches of 4, not 2
    proc = run_cli("-m", "ms_gpt4image", "train", "-c", cfg, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[-1]]
    assert "accumulate_steps = 2 does not make global_batch = 12" in proc.stderr
    assert not (tmp_path / "bad").exists()
