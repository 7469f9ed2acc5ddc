"""Alignment losses between projected image features and text embeddings.

All take `img` [B, k] (projected image features W f) and `txt` [B, k] (L2-normalised text
embeddings of the same images, row i describes image i). Image features are L2-normalised first
when `normalize=True` (the authors' code does; the text side is normalised offline).

* infonce -- paper eq. 2, one direction (image -> texts), negatives are the other texts of the
  local batch:  -log( exp(t_i.z_i/tau) / sum_j exp(t_j.z_i/tau) ), averaged over i.
  With `global_negatives` (config align.negatives: global) and `world_size` > 1 the texts are gathered
  from every device: each rank scores its images against all texts of the global batch.
* clip    -- symmetric: mean of the image->text and text->image cross-entropies. With `world_size`
  > 1 the negatives come from every device (as in the authors' code): each rank scores its local
  images against all gathered texts and its local texts against all gathered images. Each rank's
  loss covers only its own rows/columns, so the mean over ranks is the single-device loss on the
  global batch; the gather's backward (a sum over ranks) routes every rank's column gradients back
  to the features' owner, and the usual mean over ranks of the gradients gives exactly the
  single-device gradient (no world_size factor, because no rank recomputes another rank's rows).
* cosine  -- 2 - 2 cos(z_i, t_i), no negatives.
"""
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor


class GatherWithGrad(nn.Cell):
    """AllGather along the batch whose backward sums every rank's gradient and keeps this rank's
    slice (the semantics of ReduceScatter-sum, written with AllReduce because the CPU backend has
    no ReduceScatter kernel)."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank
        self.all_gather = ops.AllGather()
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)

    def construct(self, x: Tensor) -> Tensor:
        return self.all_gather(x)

    def bprop(self, x, out, dout):
        b = x.shape[0]
        return (self.all_reduce(dout)[self.rank * b:(self.rank + 1) * b],)


def _l2_normalize(x: Tensor) -> Tensor:
    return x / ops.sqrt((x * x).sum(axis=-1, keepdims=True) + 1e-12)


class AlignLoss(nn.Cell):
    KINDS = ("infonce", "clip", "cosine")

    def __init__(self, kind: str = "infonce", tau: float = 0.5, normalize: bool = True,
                 world_size: int = 1, rank: int = 0, global_negatives: bool = False):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"align.loss must be one of {self.KINDS}, got {kind!r}")
        if tau <= 0:
            raise ValueError(f"align.tau must be > 0, got {tau}")
        self.kind = kind
        self.inv_tau = 1.0 / tau
        self.normalize = normalize
        self.ce = nn.CrossEntropyLoss()
        # clip gathers the negatives over the ranks always (the authors' code); infonce, whose reference
        # takes them per GPU, only for `align.negatives: global`, and only the texts (its one direction)
        self.gather = world_size > 1 and (kind == "clip" or (kind == "infonce" and global_negatives))
        self.rank = rank
        if self.gather:
            self.all_gather = GatherWithGrad(rank)

    def construct(self, img: Tensor, txt: Tensor) -> Tensor:
        if self.normalize:
            img = _l2_normalize(img)
        if self.kind == "cosine":
            return (2.0 - 2.0 * (_l2_normalize(img) * txt).sum(axis=-1)).mean()
        if self.gather:
            b = img.shape[0]
            target = (ops.arange(b) + self.rank * b).astype("int32")
            if self.kind == "infonce":
                return self.ce(ops.matmul(img, self.all_gather(txt).T) * self.inv_tau, target)
            rows = ops.matmul(img, self.all_gather(txt).T) * self.inv_tau          # local images x all texts
            cols = ops.matmul(txt, self.all_gather(img).T) * self.inv_tau          # local texts x all images
            return 0.5 * (self.ce(rows, target) + self.ce(cols, target))
        logits = ops.matmul(img, txt.T) * self.inv_tau  # [B_img, B_txt]
        target = ops.arange(img.shape[0]).astype("int32")
        loss = self.ce(logits, target)
        if self.kind == "clip":
            loss = 0.5 * (loss + self.ce(logits.T, target))
        return loss


class GPT4ImageLoss(nn.Cell):
    """L = CE(logits, y) + lambda * align(W f, t). Returns (total, ce, align)."""

    def __init__(self, lam: float = 0.3, kind: str = "infonce", tau: float = 0.5, normalize: bool = True,
                 label_smoothing: float = 0.0, world_size: int = 1, rank: int = 0, global_negatives: bool = False):
        super().__init__()
        self.lam = lam
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.align = AlignLoss(kind, tau, normalize, world_size, rank, global_negatives)

    def construct(self, logits, proj, label, text_emb):
        ce = self.ce(logits, label)
        align = self.align(proj, text_emb)
        return ce + self.lam * align, ce, align
