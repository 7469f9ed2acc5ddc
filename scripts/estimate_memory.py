"""Estimates the per-device memory of training each ImageNet recipe at its per-device batch, in parts:
weights, gradients, optimizer state (momentum: 1 copy, adamw: 2), the EMA copy (ema: true), and the
activations saved for the backward, without and with recomputing the residual blocks (`recompute: true`).

The activations are measured, not guessed: the equivalent PyTorch model (tests/make_torch_models.py's ResNet-50
and ConvNeXt, timm 0.3.2's VisionTransformer for DeiT via tests/timm_reference.py, transformers' Hiera) runs
forward + loss (cross-entropy + the alignment InfoNCE through the recipe's projector) on the CPU at a small
batch under torch.autograd.graph.saved_tensors_hooks; the unique saved tensors (deduplicated by storage, the
parameters left out) are summed and scaled linearly to the recipe's batch. Recompute: every residual block
runs under torch.utils.checkpoint (use_reentrant=False); what is still saved (stem, head, loss) plus every
block's input is kept, plus the largest single block's own saved activations (the one being recomputed).
Mixed precision O2 (MindSpore: the network in float16, BatchNorm/LayerNorm in float32): every floating saved
tensor halves except those saved by a normalisation layer (its float32 input and statistics stay float32),
integer tensors (max-pool indices) stay as they are, and the float16 casts of the weights, kept for the
backward, add 2 bytes a parameter. MindSpore's own overhead (operator workspace, fragmentation, the graph's
buffers, communication memory) is not in the estimate: read its own figure on the first NPU job (the
"Used/Actual peak memory usage" lines; docs/cluster.md, "Device memory per recipe (estimate)").
torch only (never MindSpore in the same process); the configs are read with ms_gpt4image.config.

The batch is the recipe's `batch_size`, the largest micro-batch any device count trains; where the recipe's
`global_batch` on --devices accumulates micro-batches, their summed gradients add one gradient copy.

Usage: python scripts/estimate_memory.py [--recipes imagenet_resnet50 ...] [--devices 8] [--measure-batch 2]
       [--threads 2] [--breakdown]
"""
import argparse
import collections.abc
import functools
import importlib
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from ms_gpt4image.config import load_config  # noqa: E402  (yaml only: no MindSpore)

GIB = 1024 ** 3
TEXT_DIM = 768                  # CLIP ViT-L/14's embedding (export/embed.py: openai/clip-vit-large-patch14)
CARDS_GB = (32, 64)             # Ascend 910A / 910B 32 GB, 910B 64 GB (HBM, binary GiB)
USABLE = 0.90                   # MindSpore takes about this share of the card (58 of 64 GiB in its log)
ROOMY = 0.75                    # "yes" below this share: room for MindSpore's own overhead
OPT_COPIES = {"momentum": 1, "sgd": 0, "adamw": 2, "adam": 2, "lamb": 2, "lion": 1, "rmsprop": 1, "adagrad": 1}


# ------------------------------------------------------------------------------------- the torch models

def _drop_path(x, p, training):
    """timm 0.3.2's drop_path (mindcv's DropPath keeps the same tensors: x and the per-sample mask)."""
    if p == 0.0 or not training:
        return x
    keep = 1 - p
    mask = torch.floor(keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype))
    return x.div(keep) * mask


def resnet50(num_classes, **_):
    import make_torch_models as m
    net = m.ResNet(m.Bottleneck, [3, 4, 6, 3], num_classes)
    blocks = [b for i in range(1, 5) for b in getattr(net, f"layer{i}")]
    return net, net.features, net.fc, blocks, 2048


CONVNEXT = {"convnext_tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
            "convnext_small": ([3, 3, 27, 3], [96, 192, 384, 768]),
            "convnext_base": ([3, 3, 27, 3], [128, 256, 512, 1024])}


def convnext(name, num_classes, drop_path_rate=0.0, **_):
    import make_torch_models as m
    depths, dims = CONVNEXT[name]
    net = m.ConvNeXt(depths, dims, num_classes)
    blocks = [b for stage in net.stages for b in stage]
    rates = torch.linspace(0, drop_path_rate, len(blocks)).tolist()  # ConvNeXt's / mindcv's per-block rates

    def forward(self, x):  # the official block with its drop path (make_torch_models' has none)
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + _drop_path(y.permute(0, 3, 1, 2), self.drop_prob, self.training)

    for b, r in zip(blocks, rates):
        b.drop_prob = r
        b.forward = types.MethodType(forward, b)
    return net, net.features, net.head, blocks, dims[-1]


@functools.lru_cache(maxsize=None)
def _timm032_vit_module():
    """timm 0.3.2's models/vision_transformer.py through tests/timm_reference.py's stub packages, with what its
    imports need on a current torch: torch._six, timm.data's constants and the real models.layers package."""
    if "torch._six" not in sys.modules:
        six = types.ModuleType("torch._six")
        six.container_abcs, six.string_classes, six.int_classes = collections.abc, (str, bytes), int
        sys.modules["torch._six"] = six
    import timm_reference
    if not timm_reference.available():
        raise SystemExit(f"timm 0.3.2 is not installed under {timm_reference.ROOT.parent} (run `make setup`)")
    timm_reference._install_stub_packages()
    constants = importlib.import_module("timm.data.constants")
    for k in dir(constants):
        if k.isupper():
            setattr(sys.modules["timm.data"], k, getattr(constants, k))
    if getattr(sys.modules.get("timm.models.layers"), "_timm032_stub", False):
        del sys.modules["timm.models.layers"]
        importlib.import_module("timm.models.layers")
    return importlib.import_module("timm.models.vision_transformer")


DEIT = {"deit_small": (384, 6), "deit_base": (768, 12)}


def deit(name, num_classes, image_size=224, drop_path_rate=0.1, **_):
    vt = _timm032_vit_module()
    dim, heads = DEIT[name]
    net = vt.VisionTransformer(img_size=image_size, patch_size=16, embed_dim=dim, depth=12, num_heads=heads,
                               mlp_ratio=4, qkv_bias=True, drop_path_rate=drop_path_rate,
                               norm_layer=lambda d: nn.LayerNorm(d, eps=1e-6), num_classes=num_classes)
    return net, net.forward_features, net.head, list(net.blocks), dim


HIERA = {"hiera_tiny_224": [1, 2, 7, 2], "hiera_base_224": [2, 3, 16, 3]}   # embed 96, heads 1,2,4,8


def hiera(name, num_classes, image_size=224, drop_path_rate=0.0, **_):
    from transformers import HieraConfig, HieraForImageClassification
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    cfg = HieraConfig(embed_dim=96, num_heads=[1, 2, 4, 8], depths=HIERA[name], image_size=[image_size, image_size],
                      num_labels=num_classes, drop_path_rate=drop_path_rate)
    net = HieraForImageClassification(cfg)
    blocks = [layer for stage in net.hiera.encoder.stages for layer in stage.layers]
    return net, lambda x: net.hiera(x).pooler_output, net.classifier, blocks, net.hiera.num_features


def build(model, num_classes, image_size, kwargs):
    if model == "resnet50":
        return resnet50(num_classes, **kwargs)
    if model in CONVNEXT:
        return convnext(model, num_classes, **kwargs)
    if model in DEIT:
        return deit(model, num_classes, image_size, **kwargs)
    if model in HIERA:
        return hiera(model, num_classes, image_size, **kwargs)
    raise SystemExit(f"estimate_memory: no torch reference for model {model!r}")


def projector(in_dim, out_dim, kind, mlp_bn):
    """ms_gpt4image/gpt4image.py's Projector in torch."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim, bias=False)
    layers = [nn.Linear(in_dim, 2 * out_dim, bias=not mlp_bn)] + ([nn.BatchNorm1d(2 * out_dim)] if mlp_bn else [])
    return nn.Sequential(*layers, nn.ReLU(), nn.Linear(2 * out_dim, out_dim))


# ------------------------------------------------------------------------------------- the measurement

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


class SavedTensors:
    """Unique storages saved for the backward while active: bytes, whether a norm layer (the innermost module
    running) saved it, whether another op did, and the residual block it was first saved in."""

    def __init__(self, skip_ptrs, blocks):
        self.skip = skip_ptrs
        self.block_of = {id(b): i for i, b in enumerate(blocks)}
        self.stack, self.current_block = [], []
        self.entries = {}          # ptr -> dict(bytes, float, norm, other, block, kind, tensor)
        self.block_inputs = {}     # ptr -> (bytes, block index, tensor): what each block was called with
        self.hooks = []

    def _pre(self, module, args):
        self.stack.append(module)
        i = self.block_of.get(id(module))
        if i is not None:
            self.current_block.append(i)
            for a in args:
                if torch.is_tensor(a):
                    st = a.untyped_storage()
                    self.block_inputs.setdefault(st.data_ptr(), (st.nbytes(), i, a))

    def _post(self, module, args, out):
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
        if id(module) in self.block_of and self.current_block:
            self.current_block.pop()

    def pack(self, t):
        st = t.untyped_storage()
        ptr, nbytes = st.data_ptr(), st.nbytes()
        if nbytes == 0 or ptr in self.skip:
            return t
        inner = self.stack[-1] if self.stack else None
        e = self.entries.setdefault(ptr, dict(bytes=nbytes, float=t.is_floating_point(), norm=False, other=False,
                                              block=self.current_block[0] if self.current_block else None,
                                              kind=type(inner).__name__ if inner is not None else "(loss/functional)",
                                              tensor=t))
        e["norm" if isinstance(inner, NORMS) or type(inner).__name__ == "LayerNormCF" else "other"] = True
        return t

    def __enter__(self):
        self.hooks = [nn.modules.module.register_module_forward_pre_hook(self._pre),
                      nn.modules.module.register_module_forward_hook(self._post)]
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)
        for h in self.hooks:
            h.remove()


def o2_bytes(e):
    """An entry's bytes under O2: a norm layer's saves in float32 (a separate float32 cast of its input), any
    other op's floating saves in float16, integer tensors as they are."""
    if not e["float"]:
        return e["bytes"]
    return (e["bytes"] if e["norm"] else 0) + (e["bytes"] // 2 if e["other"] else 0)


def step(net, features, head, proj, x, y, text, tau=0.5, lam=0.3):
    f = features(x)
    logits = head(f)
    z = F.normalize(proj(f), dim=-1)
    sim = z @ F.normalize(text, dim=-1).t() / tau
    return F.cross_entropy(logits, y, label_smoothing=0.1) + lam * F.cross_entropy(sim, torch.arange(len(x)))


def measure(cfg, b):
    """Saved-activation bytes at batch b: plain (float32, O2), recompute (float32, O2), parts, counts."""
    torch.manual_seed(0)
    num_classes = cfg["num_classes"] or 1000
    net, features, head, blocks, width = build(cfg["model"], num_classes, cfg["image_size"], dict(cfg["model_kwargs"]))
    a = cfg["align"]
    proj = projector(width, TEXT_DIM, a["projector"], a["mlp_bn"])
    for m in list(net.modules()) + list(proj.modules()):  # p = 0 dropouts are identities in MindSpore too
        if isinstance(m, nn.Dropout) and m.p == 0:
            m.forward = lambda t: t
    net.train()
    proj.train()
    params = [p for m in (net, proj) for p in m.parameters()]
    buffers = [t for m in (net, proj) for t in m.buffers() if t.is_floating_point()]  # BN running stats
    skip = {p.untyped_storage().data_ptr() for p in params} | {t.untyped_storage().data_ptr() for t in buffers}
    n_train, n_buf = sum(p.numel() for p in params), sum(t.numel() for t in buffers)
    n_backbone = sum(p.numel() for p in net.parameters()) + sum(t.numel() for t in net.buffers()
                                                                 if t.is_floating_point())
    s = cfg["image_size"]
    x, y, text = torch.randn(b, 3, s, s), torch.randint(0, num_classes, (b,)), torch.randn(b, TEXT_DIM)

    with SavedTensors(skip, blocks) as plain:
        loss = step(net, features, head, proj, x, y, text)
    del loss
    entries = plain.entries.values()
    full32, full16 = sum(e["bytes"] for e in entries), sum(o2_bytes(e) for e in entries)
    per_block32, per_block16 = [0] * len(blocks), [0] * len(blocks)
    for ptr, e in plain.entries.items():
        i = e["block"]
        if i is not None and not (ptr in plain.block_inputs and plain.block_inputs[ptr][1] == i):
            per_block32[i] += e["bytes"]
            per_block16[i] += o2_bytes(e)
    kinds = {}
    for e in entries:
        k = kinds.setdefault(e["kind"], [0, 0])
        k[0] += e["bytes"]
        k[1] += o2_bytes(e)
    plain.entries.clear()

    originals = [blk.forward for blk in blocks]
    for blk, fwd in zip(blocks, originals):
        blk.forward = (lambda fwd: lambda *args, **kw: checkpoint(fwd, *args, use_reentrant=False, **kw))(fwd)
    with SavedTensors(skip, blocks) as rc:
        loss = step(net, features, head, proj, x, y, text)
    del loss
    for blk, fwd in zip(blocks, originals):
        blk.forward = fwd
    kept32 = sum(e["bytes"] for e in rc.entries.values())
    kept16 = sum(o2_bytes(e) for e in rc.entries.values())
    for ptr, (nbytes, _, _) in rc.block_inputs.items():  # held by checkpoint for the recomputation
        if ptr not in rc.entries:
            kept32 += nbytes
            kept16 += nbytes // 2
    return dict(n_train=n_train, n_buf=n_buf, n_backbone=n_backbone, blocks=len(blocks), full32=full32, full16=full16,
                kept32=kept32, kept16=kept16, block32=max(per_block32), block16=max(per_block16), kinds=kinds)


# ------------------------------------------------------------------------------------- the estimate

def fit(total, card):
    if total <= ROOMY * card:
        return "yes"
    return "tight" if total <= USABLE * card else "no"


def fits(plain, rc, card):
    """'yes' / 'tight' / 'no' without recompute, or what recompute gives when that is better."""
    a, r = fit(plain, card), fit(rc, card)
    order = ("no", "tight", "yes")
    return a if order.index(r) <= order.index(a) else f"{r} with recompute"


def layout(cfg, devices):
    """(micro-batch, accumulated micro-batches) of the recipe on `devices` (ms_gpt4image/batch_layout.py), or
    (None, None) where the global batch does not split over them."""
    try:
        from ms_gpt4image.batch_layout import resolve
        lay = resolve(cfg, devices)
        return lay.micro_batch, lay.accumulate
    except Exception:  # noqa: BLE001  (a layout that cannot be: the column says n/a)
        return None, None


def recipes_default():
    return sorted(p.stem for p in (ROOT / "configs").glob("imagenet_*.yaml") if not p.stem.endswith("_baseline"))


def table(head, rows):
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def estimate(name, args):
    """One recipe: (main table row, parts table row)."""
    t0 = time.perf_counter()
    path = ROOT / "configs" / f"{name}.yaml"
    cfg = load_config(str(path) if path.is_file() else name)
    B, b = cfg["batch_size"], args.measure_batch
    m = measure(cfg, b)
    k = B / b
    g = lambda v: f"{v / GIB:.2f}"  # noqa: E731
    copies = OPT_COPIES.get(cfg["opt"], 2)
    weights = (m["n_train"] + m["n_buf"]) * 4
    grads = m["n_train"] * 4
    opt = copies * m["n_train"] * 4
    ema = weights if cfg["ema"] else 0
    eval_copy = m["n_backbone"] * 4             # train.build_eval_net: a backbone of its own on the device
    micro, accumulate = layout(cfg, args.devices)
    summed = grads if accumulate and accumulate > 1 else 0   # engine.TrainStep: the micro-batches' gradient sum
    state = weights + grads + opt + ema + eval_copy + summed
    o2 = cfg["amp_level"] in ("O2", "O3")
    casts = m["n_train"] * 2 if o2 else 0      # float16 casts of the weights, kept for the backward
    act32 = m["full32"] * k
    act = (m["full16"] if o2 else m["full32"]) * k + casts
    kept = (m["kept16"] if o2 else m["kept32"]) * k + casts
    block = (m["block16"] if o2 else m["block32"]) * k
    total, total_rc = state + act, state + kept + block
    label = Path(name).stem
    row = [label, cfg["model"], str(B), g(state), f"{act32 / GIB:.1f} / {act / GIB:.1f}", f"{total / GIB:.1f}",
           f"{total_rc / GIB:.1f}"] + [fits(total / GIB, total_rc / GIB, c) for c in CARDS_GB]
    lay = "n/a" if micro is None else f"{micro} x {accumulate}" + (f" (+{g(summed)} summed grads)" if summed else "")
    part = [label, f"{(m['n_train'] + m['n_buf']) / 1e6:.1f}", g(weights), g(grads),
            f"{cfg['opt']} x{copies}: {g(opt)}",
            g(ema) if ema else "-", g(eval_copy), lay, cfg["amp_level"], str(m["blocks"]),
            f"{m['kept32'] * k / GIB:.2f} / {g(kept)}", f"{m['block32'] * k / GIB:.2f} / {g(block)}"]
    print(f"# {label}: measured at batch {b} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    if args.breakdown:
        for kind, (v32, v16) in sorted(m["kinds"].items(), key=lambda kv: -kv[1][0]):
            print(f"#   {kind:28s} {v32 * k / GIB:7.2f} GiB float32 {v16 * k / GIB:7.2f} GiB O2", file=sys.stderr)
    return row, part


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=None,
                    help="recipe names or config paths (default: configs/imagenet_*.yaml except *_baseline)")
    ap.add_argument("--devices", type=int, default=8,
                    help="devices for the recipe's global_batch layout (accumulation adds a gradient copy)")
    ap.add_argument("--measure-batch", type=int, default=2, help="batch of the measured forward (scaled linearly)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--breakdown", action="store_true",
                    help="also print (stderr) the saved bytes by the module that saved them")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows, parts = zip(*[estimate(name, args) for name in args.recipes or recipes_default()])
    print(table(["recipe", "model", "batch/device", "weights+grads+optimizer+EMA, eval copy (GiB)",
                 "activations float32 / O2 (GiB)", "total O2 (GiB)", "total O2, recompute (GiB)",
                 "32 GB card (910A/910B)", "64 GB card (910B)"], rows))
    print()
    print(table(["recipe", "params (M)", "weights", "grads", "optimizer", "EMA", "eval net",
                 f"on {args.devices} devices: micro-batch x accumulated", "amp", "residual blocks",
                 "recompute: kept (block inputs, stem, head) float32 / O2", "recompute: one block float32 / O2"],
                parts))
    print(f"""
GiB = 2^30 bytes. Activations: measured at batch {args.measure_batch} on the PyTorch reference, scaled to the
recipe's batch_size. Weights part: the trained net's weights, gradients, optimizer state and EMA, the evaluation
network's own backbone weights (train.build_eval_net) and, where the layout on {args.devices} devices accumulates,
the summed gradients. O2: floating saved tensors halved except normalisation layers' (float32), plus 2 bytes a
parameter for the float16 weight casts (a recipe at amp_level O0 shows float32 in the O2 columns). Recompute:
kept + the largest block's own activations. Cards: 'yes' <= {ROOMY:.0%} of the card, 'tight' <= {USABLE:.0%}
(about what MindSpore takes of it: 58 of 64 GiB), 'no' above. Not in the estimate: MindSpore's operator workspace,
fragmentation, the graph's own and communication buffers, the backward's transient gradients, the evaluation
forward. MindSpore's own figure: MS_DEV_RUNTIME_CONF="memory_statistics:True" prints "[MS_RUNTIME_PROF]" with
"Used peak memory usage (without fragments): NM" and "Actual peak memory usage (with fragments): NM" on exit.
(run time {time.perf_counter() - start:.0f} s, torch {torch.__version__}, {args.threads} threads)""")


if __name__ == "__main__":
    sys.exit(main())
