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
        return self.loss(logits, proj, label, text_emb)


class TrainStep(nn.Cell):
    """One optimisation step on the total loss; CE and alignment come back for logging only.
    `grad_reducer` averages gradients across devices in data-parallel runs (identity otherwise)."""

    def __init__(self, net_with_loss: NetWithLoss, optimizer: nn.Optimizer, grad_reducer: nn.Cell = None):
        super().__init__(auto_prefix=False)
        self.net_with_loss = net_with_loss
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.grad_reducer = grad_reducer if grad_reducer is not None else nn.Identity()

    def construct(self, image, label, text_emb):
        loss, ce, align = self.net_with_loss(image, label, text_emb)
        # d(total)/d(weights): sensitivity 1 on the total, 0 on the logged parts
        sens = (ops.ones_like(loss), ops.zeros_like(ce), ops.zeros_like(align))
        grads = self.grad(self.net_with_loss, self.weights)(image, label, text_emb, sens)
        grads = self.grad_reducer(grads)
        self.optimizer(grads)
        return loss, ce, align


def evaluate(net: nn.Cell, dataset) -> Dict:
    """Top-1 / top-5 of `net` (image -> logits) over every sample of `dataset`."""
    net.set_train(False)
    correct1 = correct5 = n = 0
    for image, label in dataset.create_tuple_iterator(num_epochs=1):
        logits = net(image).asnumpy()
        y = label.asnumpy()
        top5 = np.argsort(-logits, axis=1)[:, :5]
        correct1 += int((top5[:, 0] == y).sum())
        correct5 += int((top5 == y[:, None]).any(axis=1).sum())
        n += len(y)
    if n == 0:
        raise ValueError("evaluation dataset is empty")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "count": n}
