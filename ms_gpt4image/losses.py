"""Alignment losses between projected image features and text embeddings.

All take `img` [B, k] (projected image features W f) and `txt` [B, k] (L2-normalised text
embeddings of the same images, row i describes image i). Image features are L2-normalised first
when `normalize=True` (the authors' code does; the text side is normalised offline).

* infonce -- paper eq. 2, one direction (image -> texts), negatives are the other texts of the
  local batch:  -log( exp(t_i.z_i/tau) / sum_j exp(t_j.z_i/tau) ), averaged over i.
* clip    -- symmetric: mean of the image->text and text->image cross-entropies.
* cosine  -- 2 - 2 cos(z_i, t_i), no negatives.
"""
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor


def _l2_normalize(x: Tensor) -> Tensor:
    return x / ops.sqrt((x * x).sum(axis=-1, keepdims=True) + 1e-12)


class AlignLoss(nn.Cell):
    KINDS = ("infonce", "clip", "cosine")

    def __init__(self, kind: str = "infonce", tau: float = 0.5, normalize: bool = True):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"align.loss must be one of {self.KINDS}, got {kind!r}")
        if tau <= 0:
            raise ValueError(f"align.tau must be > 0, got {tau}")
        self.kind = kind
        self.inv_tau = 1.0 / tau
        self.normalize = normalize
        self.ce = nn.CrossEntropyLoss()

    def construct(self, img: Tensor, txt: Tensor) -> Tensor:
        if self.normalize:
            img = _l2_normalize(img)
        if self.kind == "cosine":
            return (2.0 - 2.0 * (_l2_normalize(img) * txt).sum(axis=-1)).mean()
        logits = ops.matmul(img, txt.T) * self.inv_tau  # [B_img, B_txt]
        target = ops.arange(img.shape[0]).astype("int32")
        loss = self.ce(logits, target)
        if self.kind == "clip":
            loss = 0.5 * (loss + self.ce(logits.T, target))
        return loss


class GPT4ImageLoss(nn.Cell):
    """L = CE(logits, y) + lambda * align(W f, t). Returns (total, ce, align)."""

    def __init__(self, lam: float = 0.3, kind: str = "infonce", tau: float = 0.5, normalize: bool = True,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.lam = lam
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.align = AlignLoss(kind, tau, normalize)

    def construct(self, logits, proj, label, text_emb):
        ce = self.ce(logits, label)
        align = self.align(proj, text_emb)
        return ce + self.lam * align, ce, align
