"""Train step and evaluation loop (the DeiT repo's engine.py, in MindSpore graph mode)."""
from typing import Dict

import numpy as np
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops


def setup_context(cfg: Dict) -> None:
    mode = ms.GRAPH_MODE if cfg["mode"] == "graph" else ms.PYNATIVE_MODE
    ms.set_context(mode=mode)
    ms.set_device(cfg["device_target"])
    ms.set_seed(cfg["seed"])


class NetWithLoss(nn.Cell):
    """image, label, text_emb -> (total, ce, align). auto_prefix=False keeps parameter names
    (`backbone.*`, `projector.*`) independent of this wrapper."""

    def __init__(self, net: nn.Cell, loss: nn.Cell):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss = loss

    def construct(self, image, label, text_emb):
        logits, proj = self.net(image)
        # under mixed precision the net may return float16: the losses are computed in float32
        return self.loss(logits.astype(ms.float32), proj.astype(ms.float32), label, text_emb)


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

    Built on MindSpore's loss-scale cell: `scale_sense` is a Tensor (fixed scale, 1.0 = none) or a
    `nn.DynamicLossScaleUpdateCell` (steps whose gradients overflow are skipped and the scale
    shrinks). In data-parallel mode the parent creates the gradient all-reduce (mean). With
    `ema_decay` > 0 an exponential moving average of every net parameter (BatchNorm statistics
    included) is kept under the `ema.` prefix: constant decay as timm's ModelEma (the DeiT and
    ConvNeXt recipes), or with `ema_warmup` steps mindcv's warm-up decay * (1 - exp(-t / warmup)).
    """

    def __init__(self, net_with_loss: NetWithLoss, optimizer: nn.Optimizer, scale_sense=None,
                 ema_decay: float = 0.0, clip_grad_norm: float = 0.0, ema_warmup: int = 0):
        if scale_sense is None:
            scale_sense = ms.Tensor(1.0, ms.float32)
        super().__init__(net_with_loss, optimizer, scale_sense)
        # the parent's overflow check reads NPU float-status registers; on CPU test the gradients
        # directly (they are already all-reduced, so every rank reaches the same verdict)
        self.finite_check = ms.get_context("device_target") == "CPU"
        self.clip_grad_norm = clip_grad_norm
        self.use_ema = ema_decay > 0
        if self.use_ema:
            self.ema_decay = ema_decay
            self.ema_warmup = float(ema_warmup)
            self.ema_updates = ms.Parameter(ms.Tensor(0.0, ms.float32), name="ema_updates")
            self.model_weights = ms.ParameterTuple(list(net_with_loss.net.get_parameters()))
            self.ema_weights = self.model_weights.clone("ema", init="same")

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

    def construct(self, image, label, text_emb):
        loss, ce, align = self.network(image, label, text_emb)
        scaling_sens = self.scale_sense
        status, scaling_sens = self.start_overflow_check(loss, scaling_sens)
        # d(total)/d(weights), scaled: sensitivity = loss scale on the total, 0 on the logged parts
        sens = (ops.ones_like(loss) * ops.cast(scaling_sens, ops.dtype(loss)), ops.zeros_like(ce), ops.zeros_like(align))
        grads = self.grad(self.network, self.weights)(image, label, text_emb, sens)
        grads = self.grad_reducer(grads)
        grads = self.hyper_map(ops.partial(_grad_scale, scaling_sens), grads)
        if self.clip_grad_norm > 0:
            grads = ops.clip_by_global_norm(grads, self.clip_grad_norm)
        if self.loss_scaling_manager is not None:
            if self.finite_check:
                cond = ops.logical_not(ms.amp.all_finite(grads))
            else:
                cond = self.get_overflow_status(status, grads)
            overflow = self.process_loss_scale(cond)
            if not overflow:
                loss = self._apply(loss, grads)
        else:
            loss = self._apply(loss, grads)
        return loss, ce, align


def topk_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """[B, k] class indices by descending logit (evaluate and predict rank the same way)."""
    return np.argsort(-logits, axis=1)[:, :k]


def evaluate(net: nn.Cell, dataset) -> Dict:
    """Top-1 / top-5 of `net` (image -> logits) over every sample of `dataset`."""
    net.set_train(False)
    correct1 = correct5 = n = 0
    for image, label in dataset.create_tuple_iterator(num_epochs=1):
        logits = net(image).asnumpy()
        y = label.asnumpy()
        top5 = topk_indices(logits, 5)
        correct1 += int((top5[:, 0] == y).sum())
        correct5 += int((top5 == y[:, None]).any(axis=1).sum())
        n += len(y)
    if n == 0:
        raise ValueError("evaluation dataset is empty")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "count": n}
