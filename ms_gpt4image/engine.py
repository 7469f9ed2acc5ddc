"""Train step and evaluation loop (the DeiT repo's engine.py, in MindSpore graph mode)."""
from typing import Dict, Optional

import numpy as np
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

from .checkpoint import LOG_PREFIX
from .compat import set_device
from .distributed import World, all_reduce_sum


def setup_context(cfg: Dict) -> None:
    mode = ms.GRAPH_MODE if cfg["mode"] == "graph" else ms.PYNATIVE_MODE
    ms.set_context(mode=mode)
    set_device(cfg["device_target"])
    ms.set_seed(cfg["seed"])


class NetWithLoss(nn.Cell):
    """image, label, text_emb -> (total, ce, align). auto_prefix=False keeps parameter names
    (`backbone.*`, `projector.*`) independent of this wrapper. `normalize` (device_input.DeviceNormalize,
    for pipelines that send uint8 images: config `device_normalize`) runs on the image first, in float32
    outside the net's mixed precision; it holds no parameters, so checkpoints do not change."""

    def __init__(self, net: nn.Cell, loss: nn.Cell, normalize: Optional[nn.Cell] = None):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss = loss
        self.normalize = normalize

    def forward(self, image):
        if self.normalize is not None:
            image = self.normalize(image)
        logits, proj = self.net(image)
        # under mixed precision the net may return float16: the losses are computed in float32
        return logits.astype(ms.float32), proj.astype(ms.float32)

    def construct(self, image, label, text_emb):
        logits, proj = self.forward(image)
        return self.loss(logits, proj, label, text_emb)


class ScaledLoss(nn.Cell):
    """(total x weight, ce, align): the micro-batch objective differentiated by TrainStep's accumulation."""

    def __init__(self, net_with_loss: nn.Cell):
        super().__init__(auto_prefix=False)
        self.inner = net_with_loss

    def construct(self, image, label, third, weight):
        total, ce, align = self.inner(image, label, third)
        return total * weight, ce, align


class CachedAlignNetWithLoss(nn.Cell):
    """The micro-batch loss of gradient caching (`align.negatives: global`): image, label, the
    alignment loss's gradient w.r.t. this micro-batch's projected features (computed over the whole
    global batch, TrainStep._feature_grads) -> (surrogate, ce, 0). The surrogate CE + accumulate x
    lambda x <W f, g> has the gradient of this micro-batch's share of CE_mean + lambda x align(global
    batch): summed over the micro-batches (each at sensitivity 1 / accumulate) it is the global batch's."""

    def __init__(self, net_with_loss: NetWithLoss, accumulate: int):
        super().__init__(auto_prefix=False)
        self.inner = net_with_loss
        self.weight = float(accumulate * net_with_loss.loss.lam)

    def construct(self, image, label, feature_grad):
        logits, proj = self.inner.forward(image)
        ce = self.inner.loss.ce(logits, label)
        return ce + self.weight * (proj * feature_grad).sum(), ce, ops.zeros_like(ce)


_grad_scale = ops.MultitypeFuncGraph("grad_scale")
_ema_update = ops.MultitypeFuncGraph("ema_update")


@_grad_scale.register("Tensor", "Tensor")
def _unscale(scale, grad):
    return grad * ops.cast(ops.reciprocal(scale), ops.dtype(grad))


@_ema_update.register("Tensor", "Tensor", "Tensor")
def _ema(decay, ema_weight, weight):
    return ops.assign(ema_weight, ema_weight * decay + weight * (1 - decay))


class TrainStep(nn.TrainOneStepWithLossScaleCell):
    """One optimisation step on the total loss; CE and alignment come back for logging only.

    Built on MindSpore's loss-scale cell, always with an update cell (`loss_scale_sense`): a
    `nn.FixedLossScaleUpdateCell` (none = scale 1, fixed) or a `nn.DynamicLossScaleUpdateCell`. A step
    whose gradients are not finite is skipped under all three, as torch's GradScaler skips it: the
    weights, the optimizer state and the EMA stay as they were, the dynamic scale halves (the fixed one
    stays), the skip is counted in the device-side log, and the optimizer's step counter still advances,
    so that the lr schedule keeps indexing by iteration, as the references' loops do (MindSpore's
    optimizers advance it only when they run). In data-parallel mode the parent creates the gradient
    all-reduce (mean). With `ema_decay` > 0 an exponential moving average of every net parameter
    (BatchNorm statistics included) is kept under the `ema.` prefix: constant decay as timm's ModelEma
    (the DeiT and ConvNeXt recipes), or with `ema_warmup` steps mindcv's warm-up decay
    * (1 - exp(-t / warmup)); it is updated once per applied update.

    With `accumulate_steps` N > 1 the step's batch holds the N micro-batches of one update (ConvNeXt's
    update_freq; `_accumulated_grads`): their gradients are summed, then all-reduced, unscaled, clipped,
    checked and applied once. `global_negatives` (config align.negatives: global) computes the alignment
    over the whole global batch by gradient caching (`_feature_grads`, CachedAlignNetWithLoss).
    """

    def __init__(self, net_with_loss: NetWithLoss, optimizer: nn.Optimizer, scale_sense=None,
                 ema_decay: float = 0.0, clip_grad_norm: float = 0.0, ema_warmup: int = 0,
                 accumulate_steps: int = 1, global_negatives: bool = False):
        if scale_sense is None:
            scale_sense = nn.FixedLossScaleUpdateCell(1.0)
        elif isinstance(scale_sense, ms.Tensor):  # a bare scale would apply overflowing updates
            scale_sense = nn.FixedLossScaleUpdateCell(float(scale_sense.asnumpy()))
        super().__init__(net_with_loss, optimizer, scale_sense)
        # how an overflow is seen (the parent's start_overflow_check / get_overflow_status): the NPU's
        # float-status registers, cleared after the forward, on 910A and on 910B in saturation mode; the
        # gradients themselves on GPU and 910B (INF/NaN mode); on CPU, which the parent does not cover,
        # all_finite on the gradients. They are all-reduced first: every rank reaches the same verdict.
        self.finite_check = ms.get_context("device_target") == "CPU"
        # (read from the parent's attributes as 2.7 names them; a release without them keeps the parent's
        # own order: the status is always created off CPU)
        named = hasattr(self, "ascend_910a_target") and hasattr(self, "ascend_910b_target")
        self.reads_status = not self.finite_check and (not named or bool(
            self.ascend_910a_target or (self.ascend_910b_target and
                                        getattr(self, "_ascend_check_overflow_mode", "") == "SATURATION_MODE")))
        self.clip_grad_norm = clip_grad_norm
        self.accumulate = int(accumulate_steps)
        self.global_negatives = bool(global_negatives)
        if self.global_negatives:
            self.cached_net = CachedAlignNetWithLoss(net_with_loss, self.accumulate)
            self.feature_grad = ops.GradOperation()  # d(alignment over the global batch) / d(its features)
            # BatchNorm's running statistics, put back after the features' forward (TrainStep._feature_grads):
            # the micro-batches' own forwards update them once each, as without caching
            stats = [p for p in net_with_loss.net.get_parameters() if p.name.split(".")[-1].startswith("moving_")]
            self.bn_stats = ms.ParameterTuple(stats)
            self.bn_saved = self.bn_stats.clone(f"{LOG_PREFIX}bn_saved", init="same")  # scratch: never saved
        if self.accumulate > 1 or self.global_negatives:
            # one forward per micro-batch, its value and gradients together: a separate forward call, as the
            # single-batch path makes, is not merged with the gradient's inside the loop (BatchNorm's running
            # statistics then moved twice per micro-batch)
            micro = self.cached_net if self.global_negatives else net_with_loss
            self.micro_grads = ops.value_and_grad(ScaledLoss(micro), None, self.weights, has_aux=True)
        # MindSpore's optimizers step their counter (the lr list's index) only with a dynamic lr or
        # weight decay; a skipped update advances it under the same condition
        self.advance_on_skip = bool(getattr(optimizer, "dynamic_lr", False) or
                                    getattr(optimizer, "dynamic_weight_decay", False))
        self.use_ema = ema_decay > 0
        if self.use_ema:
            self.ema_decay = ema_decay
            self.ema_warmup = float(ema_warmup)
            self.ema_updates = ms.Parameter(ms.Tensor(0.0, ms.float32), name="ema_updates")
            self.model_weights = ms.ParameterTuple(list(net_with_loss.net.get_parameters()))
            self.ema_weights = self.model_weights.clone("ema", init="same")
        # running sums of (total, CE, alignment), the step count, the skipped updates and the first
        # non-finite step since the last `read_log`, kept on the device so that no step waits for the host
        self.log_sums = ms.Parameter(ms.Tensor(np.zeros(3, np.float32)), name=f"{LOG_PREFIX}sums", requires_grad=False)
        self.log_steps = ms.Parameter(ms.Tensor(0, ms.int32), name=f"{LOG_PREFIX}steps", requires_grad=False)
        self.log_skipped = ms.Parameter(ms.Tensor(0, ms.int32), name=f"{LOG_PREFIX}skipped", requires_grad=False)
        self.log_first_bad = ms.Parameter(ms.Tensor(-1, ms.int32), name=f"{LOG_PREFIX}first_nonfinite",
                                          requires_grad=False)

    def read_log(self, reset: bool = True) -> Dict:
        """The device-side log since the last reset (one host sync): mean losses, steps, skipped updates,
        the loss scale now, and the 1-based step (since the reset) of the first non-finite loss, or 0."""
        sums, steps = self.log_sums.asnumpy().astype(np.float64), int(self.log_steps.asnumpy())
        first_bad, skipped = int(self.log_first_bad.asnumpy()), int(self.log_skipped.asnumpy())
        if reset:
            self.log_sums.set_data(ms.Tensor(np.zeros(3, np.float32)))
            self.log_steps.set_data(ms.Tensor(0, ms.int32))
            self.log_skipped.set_data(ms.Tensor(0, ms.int32))
            self.log_first_bad.set_data(ms.Tensor(-1, ms.int32))
        means = sums / max(steps, 1)
        return {"loss": float(means[0]), "ce": float(means[1]), "align": float(means[2]), "steps": steps,
                "skipped_steps": skipped, "loss_scale": float(self.scale_sense.asnumpy()),
                "first_nonfinite_step": first_bad + 1}

    def accumulate_log(self, loss, ce, align, overflow):
        """One chain of updates (each reads the step count before it is advanced), its end returned so
        that the caller orders it before the step's output."""
        values = ops.stack([loss, ce, align])
        bad = ops.logical_and(self.log_first_bad < 0, ops.logical_not(ops.isfinite(values).all()))
        done = ops.assign(self.log_first_bad, ops.select(bad, self.log_steps, self.log_first_bad))
        done = ops.depend(self.log_skipped, done)
        done = ops.assign_add(done, ops.cast(overflow, ms.int32))
        done = ops.depend(self.log_steps, done)
        done = ops.assign_add(done, ops.ones_like(self.log_steps))
        return ops.assign_add(ops.depend(self.log_sums, done), values)

    def ema_update(self):
        self.ema_updates += 1
        decay = self.ema_decay * ops.ones_like(self.ema_updates)
        if self.ema_warmup > 0:
            decay = decay * (1 - ops.exp(-self.ema_updates / self.ema_warmup))
        return self.hyper_map(ops.partial(_ema_update, decay), self.ema_weights, self.model_weights)

    def _apply(self, loss, grads):
        loss = ops.depend(loss, self.optimizer(grads))
        if self.use_ema:
            loss = ops.depend(loss, self.ema_update())
        return loss

    def _skip(self, loss):
        if self.advance_on_skip:
            loss = ops.depend(loss, ops.assign_add(self.optimizer.global_step, self.optimizer.global_step_increase_tensor))
        return loss

    def _feature_grads(self, image, text_emb):
        """Gradient caching, first pass: the projected features of every micro-batch (forwards without a
        backward, one micro-batch at a time, BatchNorm's running statistics restored afterwards), the
        alignment loss over all of them (and, through its gather, over every rank's), and its gradient
        w.r.t. each feature row. Returns (that gradient [rows, k], the alignment loss)."""
        b = image.shape[0] // self.accumulate
        first = image[:b]
        for saved, stat in zip(self.bn_saved, self.bn_stats):
            first = ops.depend(first, ops.assign(saved, stat))
        feats = []
        for i in range(self.accumulate):
            x = first if i == 0 else ops.depend(image[i * b:(i + 1) * b], feats[-1])
            feats.append(ops.stop_gradient(self.network.forward(x)[1]))
        feats = ops.concat(feats)
        for saved, stat in zip(self.bn_saved, self.bn_stats):
            feats = ops.depend(feats, ops.assign(stat, ops.depend(saved, feats)))
        align = self.network.loss.align
        return ops.stop_gradient(self.feature_grad(align)(feats, text_emb)), align(feats, text_emb)

    def _accumulated_grads(self, image, label, text_emb, scaling_sens):
        """Summed gradients of `accumulate_steps` micro-batches, cut from the step's batch in order; each
        micro-batch's forward waits for the previous backward, so one micro-batch's activations are alive
        at a time. Returns (mean total, mean CE, alignment, grads, status, scaling_sens)."""
        n = self.accumulate
        b = image.shape[0] // n
        status = None
        third_all, global_align = text_emb, None  # a micro-batch's third input: its texts, or with
        if self.global_negatives:                 # gradient caching its features' cached gradient
            third_all, global_align = self._feature_grads(image, text_emb)
        if self.reads_status:
            # the float-status registers are cleared once, before the first micro-batch's backward (the
            # scale each backward starts from waits for the clearing), and read after the last
            status, scaling_sens = self.start_overflow_check(image, scaling_sens)
        weight = ops.cast(scaling_sens, ms.float32) / n  # each micro-batch's loss / N, x the loss scale
        grads, sums = None, None
        for i in range(n):
            x, y = image[i * b:(i + 1) * b], label[i * b:(i + 1) * b]
            if grads is not None:
                x = ops.depend(x, grads)
            (_, ce, align), g = self.micro_grads(x, y, third_all[i * b:(i + 1) * b], weight)
            values = ops.stack([ce, align])
            grads, sums = (g, values) if grads is None else (self.hyper_map(ops.add, grads, g), sums + values)
        ce, align = sums[0] / n, sums[1] / n
        if self.global_negatives:  # the logged alignment: over the global batch
            align = global_align
        return ce + self.network.loss.lam * align, ce, align, grads, status, scaling_sens

    def construct(self, image, label, text_emb):
        scaling_sens = self.scale_sense
        status = None
        if self.accumulate > 1 or self.global_negatives:
            loss, ce, align, grads, status, scaling_sens = self._accumulated_grads(image, label, text_emb,
                                                                                  scaling_sens)
        else:
            loss, ce, align = self.network(image, label, text_emb)
            if self.reads_status:
                # clears the float-status registers after the forward and before the backward (scaling_sens
                # carries the order); `status` is read after the all-reduce. Elsewhere no status exists, so
                # none is left for the graph to drop ("side effect nodes were eliminated")
                status, scaling_sens = self.start_overflow_check(loss, scaling_sens)
            # d(total)/d(weights), scaled: sensitivity = loss scale on the total, 0 on the logged parts
            sens = (ops.ones_like(loss) * ops.cast(scaling_sens, ops.dtype(loss)), ops.zeros_like(ce),
                    ops.zeros_like(align))
            grads = self.grad(self.network, self.weights)(image, label, text_emb, sens)
        # one all-reduce per update, of the summed gradients (ConvNeXt's DDP reduces every micro-batch's:
        # the same sum, N times the traffic)
        grads = self.grad_reducer(grads)
        grads = self.hyper_map(ops.partial(_grad_scale, scaling_sens), grads)
        if self.clip_grad_norm > 0:
            grads = ops.clip_by_global_norm(grads, self.clip_grad_norm)
        if self.finite_check:
            cond = ops.logical_not(ms.amp.all_finite(grads))
        else:
            cond = self.get_overflow_status(status, grads)
        overflow = self.process_loss_scale(cond)  # the update cell: the dynamic scale moves here
        if overflow:
            loss = self._skip(loss)
        else:
            loss = self._apply(loss, grads)
        loss = ops.depend(loss, self.accumulate_log(loss, ce, align, overflow))
        return loss, ce, align


def topk_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """[B, k] class indices by descending logit (evaluate and predict rank the same way)."""
    return np.argsort(-logits, axis=1)[:, :k]


def pad_rows(batch: np.ndarray, rows: int) -> np.ndarray:
    """`batch` with its last row repeated up to `rows` rows (a ragged last batch takes the shape of
    the others, so a graph-mode net runs one compiled graph; the caller drops the padding's outputs)."""
    missing = rows - len(batch)
    if missing <= 0:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], missing, axis=0)])


def evaluate(net: nn.Cell, dataset, world: World = World()) -> Dict:
    """Top-1 / top-5 of `net` (image -> logits) over every sample of `dataset`. In data-parallel
    runs each rank passes its own slice of the eval set and the counts are summed over ranks.

    Every batch reaches the net with the first batch's shape (the batch size, or the whole slice when
    it is smaller): the ragged last batch is padded with repeats of its last image and the padding's
    logits are dropped, so graph mode compiles one graph per net, not a second for the last batch."""
    net.set_train(False)
    counts = np.zeros(3)  # correct top-1, correct top-5, samples
    rows = None
    for image, label in dataset.create_tuple_iterator(num_epochs=1):
        y = label.asnumpy()
        rows = rows or len(y)
        if len(y) < rows:
            image = ms.Tensor(pad_rows(image.asnumpy(), rows))
        logits = net(image).asnumpy()[:len(y)]
        top5 = topk_indices(logits, 5)
        counts += [(top5[:, 0] == y).sum(), (top5 == y[:, None]).any(axis=1).sum(), len(y)]
    correct1, correct5, n = all_reduce_sum(counts, world)
    if n == 0:
        raise ValueError("evaluation dataset is empty")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "count": int(n)}
