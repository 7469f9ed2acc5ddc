"""Every shipped recipe's optimisation against the reference implementation it follows: the per-step lr of
the whole run, the parameters with and without weight decay, the layer-wise lr scale of every parameter,
and the EMA of the weights.

References (the code each config's header names; hyperparameters below are the reference's own, not read
from our configs, so that a config drifting from its reference fails here):
  resnet50   huawei-noah/Efficient-Computing GPT4Image/resnet/main.py (the authors' code; README: 4 GPUs x
             256): SGD momentum 0.9, wd 1e-4 on every parameter, lr 0.1 x global/256, CosineAnnealingLR(
             T_max=120, eta_min=1e-5) stepped after each epoch, no warmup, no EMA.
  deit       facebookresearch/deit main.py = GPT4Image/deit/main.py (README: 8 GPUs x 128): timm 0.3.2
             create_optimizer (AdamW, wd 0.05, add_weight_decay: no decay on 1-D, *.bias and
             no_weight_decay() = pos_embed, cls_token) and create_scheduler (cosine, t_initial 300,
             warmup 5 epochs from 1e-6, min 1e-5) stepped with step(epoch) after each epoch; lr 5e-4 x
             global/512; ModelEma 0.99996 after every step.
  convnext   facebookresearch/ConvNeXt main.py + utils.cosine_scheduler + optim_factory (global 4096, lr 4e-3
             unscaled): per-iteration cosine to 1e-6 after 20 warmup epochs of np.linspace(0, lr, n); AdamW
             wd 0.05, no decay on 1-D and *.bias; no layer decay (1.0); timm 0.3.2 ModelEma 0.9999.
  hiera      dbolya/hiera branch v0.2.0 hiera/train (config.py in1k_finetune, utils.make_param_groups,
             engine.configure_optimizers): lr 2e-3 x global/1024, LinearLR(4e-8 -> 1) for 5 warmup epochs
             then CosineAnnealingLR to 0, per step; layer scale layer_decay ** (depth - get_layer_id)
             with get_layer_id: pos_embed/patch_embed 0, blocks.i i + 1, the rest depth; no decay on 1-D
             and pos_embed; no EMA.
  cifar      kuangliu/pytorch-cifar main.py (the config's "standard recipe"): SGD 0.1, momentum 0.9, wd 5e-4
             on every parameter, batch 128, CosineAnnealingLR(T_max=200) stepped after each epoch.
  demo       no reference (sized for a CPU): mindcv's create_scheduler with the config's own values.
Deliberate differences are listed in DELIBERATE with the tolerance they get; the config headers say why.
"""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from ms_gpt4image.batch_layout import apply, resolve
from ms_gpt4image.config import load_config
from ms_gpt4image.engine import NetWithLoss, TrainStep
from ms_gpt4image.train import build_training

MS_MODE = ms.PYNATIVE_MODE  # set around each test by conftest._ms_mode
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "ablations").glob("*.yaml"))
SPE = 10         # steps per epoch: every reference's clock is exercised, the real epoch counts are kept
RTOL_LR = 1e-6   # of the peak lr: the schedules are the same formula (float rounding only)

REFERENCES = {
    "resnet50": dict(schedule="torch_cosine_per_epoch", lr=0.1, lr_batch=256, epochs=120, eta_min=1e-5,
                     global_batch=1024, decay="all", ema=None),
    "deit": dict(schedule="timm_deit", lr=5e-4, lr_batch=512, epochs=300, warmup_epochs=5, warmup_lr=1e-6,
                 min_lr=1e-5, decay_rate=0.1, global_batch=1024, decay="timm", skip=("pos_embed", "cls_token"),
                 ema=0.99996),
    "convnext": dict(schedule="convnext", lr=4e-3, lr_batch=None, epochs=300, warmup_epochs=20, min_lr=1e-6,
                     global_batch=4096, decay="timm", skip=(), ema=0.9999),
    "hiera": dict(schedule="hiera_v020", lr=2e-3, lr_batch=1024, warmup_epochs=5, global_batch=1024,
                  decay="hiera", ema=None),
    "cifar": dict(schedule="torch_cosine_per_epoch", lr=0.1, lr_batch=None, epochs=200, eta_min=0.0,
                  global_batch=128, decay="all", ema=None),
    "demo": dict(schedule="mindcv", decay="own", ema=None),
}
# Hiera v0.2.0 in1k_finetune per model: epochs, layer decay
HIERA = {"hiera_tiny_224": (300, 0.65), "hiera_base_224": (100, 0.7)}

# config name pattern -> (what differs, tolerance); each is explained in the config's header
DELIBERATE = {
    r"imagenet_resnet50(_baseline|_lambda.*|_tau.*|_long)?$":
        "global batch 2048 (8 devices x 256) instead of the authors' 1024; lr linearly scaled (0.8), so "
        "the schedule is compared at 2048 with the reference's own scaling rule",
}


def _header_devices(path: Path) -> int:
    """The device count the config's comments give ('8 devices', '32 devices'), following `base:`; 1 if none."""
    text = path.read_text()
    m = re.search(r"(\d+) devices", text)
    if m:
        return int(m[1])
    base = re.search(r"^base:\s*(\S+)", text, re.M)
    return _header_devices((path.parent / base[1]).resolve()) if base else 1


def _family(path: Path, cfg) -> str:
    model = cfg["model"]
    if path.stem.startswith("demo_"):
        return "demo"
    for prefix, fam in (("resnet50", "resnet50"), ("deit_", "deit"), ("convnext_", "convnext"),
                        ("hiera_", "hiera"), ("resnet18_cifar", "cifar")):
        if model.startswith(prefix):
            return fam
    raise AssertionError(f"{path.name}: no reference for model {model}")


def _load(path: Path):
    cfg = load_config(str(path))
    cfg["pretrained_ckpt"] = None  # weights do not matter here
    return cfg


CASES = []
for _path in CONFIGS:
    _cfg = _load(_path)
    CASES.append((_path, _cfg, _family(_path, _cfg), _header_devices(_path)))
IDS = [str(p.relative_to(ROOT / "configs")) for p, *_ in CASES]


def _deliberate(path: Path):
    return next((why for pat, why in DELIBERATE.items() if re.match(pat, path.stem)), None)


def _reference_spec(cfg, fam: str, world: int):
    ref = dict(REFERENCES[fam])
    global_batch = resolve(cfg, world).global_batch  # the recipe's global_batch, or batch_size x devices
    if fam == "hiera":
        ref["epochs"], ref["layer_decay"] = HIERA[cfg["model"]]
    ref["peak"] = ref["lr"] * global_batch / ref["lr_batch"] if ref.get("lr_batch") else ref.get("lr")
    return ref, global_batch


def _convnext_cosine(base, final, epochs, niter_per_ep, warmup_epochs, start_warmup_value=0.0):
    """ConvNeXt utils.cosine_scheduler (per iteration), written from its formula."""
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = list(np.linspace(start_warmup_value, base, warmup_iters)) if warmup_epochs > 0 else []
    n = epochs * niter_per_ep - warmup_iters
    return warmup + [final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n)) for i in range(n)]


def _mindcv(cfg, lr):
    from mindcv.scheduler import create_scheduler
    return create_scheduler(SPE, scheduler=cfg["scheduler"], lr=lr, min_lr=cfg["min_lr"],
                            warmup_epochs=cfg["warmup_epochs"], warmup_factor=cfg["warmup_factor"],
                            decay_epochs=cfg["epoch_size"] - cfg["warmup_epochs"], num_epochs=cfg["epoch_size"])


def _torch_side(request):
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "fidelity_reference.py")], input=json.dumps(request),
                          capture_output=True, text=True, cwd=ROOT / "tests", timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


# -- what our code builds, once per distinct model/optimizer -------------------------------------------
_BUILT = {}


def _built(cfg):
    """{name: (shape, weight decay, lr scale)} of the optimizer build_training makes for cfg."""
    key = json.dumps([cfg[k] for k in ("model", "model_kwargs", "image_size", "in_channels", "opt", "weight_decay",
                                       "weight_decay_filter", "layer_decay", "layer_decay_ids")]
                     + [cfg["align"]["projector"], cfg["align"]["mlp_bn"]], sort_keys=True)
    if key not in _BUILT:
        manifest = {"num_classes": cfg["num_classes"] or 10, "embedding": {"dim": 16}}
        from conftest import unallocated_weights
        with unallocated_weights(cfg["model"]):  # shapes and groups only
            _, step, lr = build_training(apply(cfg, resolve(cfg, 1)), 1, manifest)  # as train() builds it
        assert list(lr) == build_training_lr(cfg, 1, steps_per_epoch=1)  # what test_lr_schedule checks
        opt = step.optimizer
        at = int(np.argmax(lr))
        out = {}
        for i, p in enumerate(opt.parameters):
            wd = float(opt.group_weight_decay[i]) if opt.is_group else float(opt.weight_decay)
            scale = float(opt.group_lr[i].learning_rate.asnumpy()[at]) / lr[at] if opt.is_group_lr else 1.0
            out[p.name] = (tuple(p.shape), wd, scale)
        _BUILT[key] = out
    return _BUILT[key]


# -- the reference side, all configs in one torch process --------------------------------------------
@pytest.fixture(scope="module")
def reference():
    schedules, decay = {}, {}
    for path, cfg, fam, world in CASES:
        ref, global_batch = _reference_spec(cfg, fam, world)
        if ref["schedule"] in ("torch_cosine_per_epoch", "timm_deit", "hiera_v020"):
            schedules[path.stem] = dict(ref, reference=ref["schedule"], lr=ref["peak"], steps_per_epoch=SPE,
                                        t_max=ref["epochs"])
        if ref["decay"] == "timm" or (ref["decay"] == "own" and cfg["weight_decay_filter"] != "disable"):
            built = _built(cfg)
            skip = ref.get("skip", ())
            if ref["decay"] == "own":  # the demo's ViT: the timm rule with the backbone's own list
                skip = ("pos_embed", "cls_token")
            decay[path.stem] = {"shapes": {n: list(s) for n, (s, _, _) in built.items()},
                                "skip": [f"backbone.{n}" for n in skip]}
    ema = {}
    for d in sorted({REFERENCES[fam]["ema"] for _, _, fam, _ in CASES if REFERENCES[fam]["ema"]}):
        ema[str(d)] = dict(_ema_inputs(), decay=d)
    return _torch_side({"schedules": schedules, "decay": decay, "ema": ema})


REPORT = {}


@pytest.mark.parametrize("path,cfg,fam,world", CASES, ids=IDS)
def test_lr_schedule(path, cfg, fam, world, reference):
    ref, global_batch = _reference_spec(cfg, fam, world)
    ours = build_training_lr(cfg, world)
    if ref["schedule"] == "convnext":
        want = _convnext_cosine(ref["peak"], ref["min_lr"], ref["epochs"], SPE, ref["warmup_epochs"])
    elif ref["schedule"] == "mindcv":
        want = _mindcv(cfg, ours_peak(cfg, world))
    else:
        want = reference["schedules"][path.stem]
    assert len(ours) == len(want), f"{path.name}: {len(ours) // SPE} epochs, the reference {len(want) // SPE}"
    ours, want = np.asarray(ours, np.float64), np.asarray(want, np.float64)
    diff, ratio = float(np.abs(ours - want).max()), float(ours.sum() / want.sum())
    REPORT.setdefault(path.stem, {}).update(max_lr_diff=diff, lr_sum_ratio=ratio, global_batch=global_batch)
    if fam != "demo" and global_batch != ref["global_batch"]:
        assert _deliberate(path), (f"{path.name}: global batch {global_batch} ({world} devices x {cfg['batch_size']}), "
                                   f"the reference's {ref['global_batch']}")
    assert diff <= RTOL_LR * float(want.max()), (
        f"{path.name}: lr differs from the reference by up to {diff:.3g} (step {int(np.abs(ours - want).argmax())}: "
        f"ours {ours[np.abs(ours - want).argmax()]:.6g}); sum ratio {ratio:.6f}")


def ours_peak(cfg, world):
    from ms_gpt4image.distributed import World
    from ms_gpt4image.train import scaled_lr
    return scaled_lr(apply(cfg, resolve(cfg, world)), World(size=world, rank=0))


def build_training_lr(cfg, world, steps_per_epoch=SPE):
    """The schedule train.build_training hands the optimizer, for `world` devices (_built checks that)."""
    from ms_gpt4image.schedule import lr_schedule
    return lr_schedule(cfg, steps_per_epoch, ours_peak(cfg, world))


@pytest.mark.parametrize("path,cfg,fam,world", CASES, ids=IDS)
def test_weight_decay_sets(path, cfg, fam, world, reference):
    built = _built(cfg)
    ours = {n for n, (_, wd, _) in built.items() if wd == 0.0}
    assert all(wd in (0.0, cfg["weight_decay"]) for _, wd, _ in built.values())
    rule = REFERENCES[fam]["decay"]
    if rule == "all" or (rule == "own" and cfg["weight_decay_filter"] == "disable"):
        want = set()
    elif rule == "hiera":  # make_param_groups: p.ndim == 1 or n in model.no_weight_decay() (pos_embed)
        want = {n for n, (s, _, _) in built.items() if len(s) == 1 or n == "backbone.pos_embed"}
    else:
        want = set(reference["decay"][path.stem])
    REPORT.setdefault(path.stem, {})["decay_sets_equal"] = ours == want
    assert ours == want, (f"{path.name}: no decay only here: {sorted(ours - want)[:10]}; "
                          f"only in the reference: {sorted(want - ours)[:10]}")


def _hiera_layer_id(name: str, depth: int) -> int:
    """Hiera v0.2.0 Hiera.get_layer_id on the backbone's names; our projector is a new group at scale 1."""
    if not name.startswith("backbone."):
        return depth
    name = name[len("backbone."):]
    if name.startswith(("pos_embed", "patch_embed")):
        return 0
    if "blocks" in name:
        return int(name.split(".")[1]) + 1
    return depth


@pytest.mark.parametrize("path,cfg,fam,world", CASES, ids=IDS)
def test_layer_decay_scales(path, cfg, fam, world):
    built = _built(cfg)
    if fam == "hiera":
        decay = HIERA[cfg["model"]][1]
        assert cfg["layer_decay"] == decay, f"{path.name}: layer_decay {cfg['layer_decay']}, Hiera's {decay}"
        depth = 1 + max(int(n.split(".")[2]) for n in built if n.startswith("backbone.blocks."))
        want = {n: decay ** (depth - _hiera_layer_id(n, depth)) for n in built}
    else:  # DeiT, ConvNeXt (layer_decay 1.0 for IN-1K training), ResNet, CIFAR: one rate for all
        want = {n: 1.0 for n in built}
    worst = max(built, key=lambda n: abs(built[n][2] - want[n]))
    REPORT.setdefault(path.stem, {})["layer_scale_max_diff"] = abs(built[worst][2] - want[worst])
    assert built[worst][2] == pytest.approx(want[worst], rel=1e-5), (
        f"{path.name}: {worst} at lr scale {built[worst][2]:.6g}, the reference's {want[worst]:.6g}")


# -- EMA -----------------------------------------------------------------------------------------------
class _Tiny(nn.Cell):
    def __init__(self):
        super().__init__()
        self.fc = nn.Dense(3, 4)
        self.bn = nn.BatchNorm1d(4)

    def construct(self, x):
        return self.bn(self.fc(x))


class _Loss(nn.Cell):
    def construct(self, out, label, text_emb):
        s = out.sum()
        return s, s, s


_EMA_UPDATES = 12


def _ema_inputs():
    ms.set_seed(0)
    net = _Tiny()
    rng = np.random.default_rng(0)
    initial = {p.name: p.asnumpy().astype(np.float64).ravel().tolist() for p in net.get_parameters()}
    updates = [{n: rng.uniform(-1, 1, len(v)).astype(np.float32).astype(np.float64).tolist()
                for n, v in initial.items()} for _ in range(_EMA_UPDATES)]
    return {"initial": initial, "updates": updates}


@pytest.mark.parametrize("path,cfg,fam,world", CASES, ids=IDS)
def test_ema(path, cfg, fam, world, reference):
    want_decay = REFERENCES[fam]["ema"]
    if fam == "demo":
        want_decay = cfg["ema_decay"] if cfg["ema"] else None
    assert (cfg["ema_decay"] if cfg["ema"] else None) == want_decay, f"{path.name}: EMA {cfg['ema']} {cfg['ema_decay']}"
    if want_decay is None:
        REPORT.setdefault(path.stem, {})["ema"] = "off (as the reference)"
        return
    assert cfg["ema_warmup"] == 0, f"{path.name}: ema_warmup {cfg['ema_warmup']}; timm's ModelEma has a constant decay"
    trajectory = _our_ema(cfg["ema_decay"], cfg["ema_warmup"])
    want = reference["ema"][str(want_decay)]
    inputs = _ema_inputs()
    worst = 0.0
    for ours, ref in zip(trajectory, want):
        for name, values in ref.items():
            moved_ref = np.asarray(values) - np.asarray(inputs["initial"][name])
            moved_ours = np.asarray(ours[name]) - np.asarray(inputs["initial"][name])
            worst = max(worst, float(np.abs(moved_ours - moved_ref).max() / np.abs(moved_ref).max()))
    REPORT.setdefault(path.stem, {})["ema"] = f"decay {want_decay}, max rel. diff of the EMA's movement {worst:.2g}"
    # our weights are float32: the EMA moves by (1 - decay) x ~0.5 per update, rounded to ~6e-8 each time
    # (0.1% of the movement at 0.99996 here); a decay off by 1e-5 would move it 25% more or less
    assert worst < 0.01, f"{path.name}: our EMA's movement differs from timm ModelEma's by {worst:.3g} (relative)"


_EMA_RUNS = {}


def _our_ema(decay, warmup):
    """TrainStep.ema_update (engine.py) after each weight update of _ema_inputs, as the train step calls it."""
    if (decay, warmup) in _EMA_RUNS:
        return _EMA_RUNS[(decay, warmup)]
    inputs = _ema_inputs()
    ms.set_seed(0)
    net = _Tiny()
    assert {p.name for p in net.get_parameters()} == set(inputs["initial"])
    for p in net.get_parameters():  # the EMA starts from these (ModelEma deep-copies the model)
        p.set_data(ms.Tensor(np.asarray(inputs["initial"][p.name], np.float32).reshape(p.shape)))
    step = TrainStep(NetWithLoss(net, _Loss()), nn.SGD(net.trainable_params(), learning_rate=0.0),
                     ema_decay=decay, ema_warmup=warmup)
    out = []
    for weights in inputs["updates"]:
        for p in net.get_parameters():
            p.set_data(ms.Tensor(np.asarray(weights[p.name], np.float32).reshape(p.shape)))
        step.ema_update()
        out.append({p.name[len("ema."):]: p.asnumpy().astype(np.float64).ravel().tolist() for p in step.ema_weights})
    _EMA_RUNS[(decay, warmup)] = out
    return out


def test_every_shipped_recipe_is_checked():
    """Each recipe the package ships (`gpt4image recipes`) is a case of the tests above, with a reference
    family; `pytest -s` prints the per-config lr table (REPORT) of the cases that ran."""
    from ms_gpt4image.config import list_recipes
    checked = {str(p.relative_to(ROOT / "configs"))[:-len(".yaml")].split("/")[-1] for p, *_ in CASES}
    assert set(list_recipes()) == checked
    assert all(fam in REFERENCES for _, _, fam, _ in CASES)
    for name, row in sorted(REPORT.items()):
        print(f"{name:40s} " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in row.items()))


# -- the new keys themselves ---------------------------------------------------------------------------
def test_layer_decay_ids_mae_and_hiera_differ_by_the_last_block():
    """mae: the last block one factor below the head, the stem at decay ** (depth + 1); hiera: the last
    block at the head's scale, the stem at decay ** depth (so the Hiera test above would fail on mae)."""
    from ms_gpt4image.gpt4image import GPT4ImageNet
    from ms_gpt4image.models import create_backbone
    from ms_gpt4image.train import build_optimizer
    scales = {}
    for ids in ("mae", "hiera"):
        cfg = load_config(None, ["model=hiera_tiny_224", "opt=adamw", "layer_decay=0.5", f"layer_decay_ids={ids}",
                                 "weight_decay_filter=norm_and_bias"])
        net = GPT4ImageNet(create_backbone("hiera_tiny_224", num_classes=10, image_size=32, embed_dim=8), 16)
        opt = build_optimizer(cfg, net, [1.0, 1.0])
        scales[ids] = {p.name: float(opt.group_lr[i].learning_rate.asnumpy()[0]) for i, p in enumerate(opt.parameters)}
    last, first = "backbone.blocks.11.attn.qkv.weight", "backbone.blocks.0.attn.qkv.weight"
    assert scales["mae"][last] == pytest.approx(0.5) and scales["hiera"][last] == 1.0
    assert scales["mae"]["backbone.pos_embed"] == pytest.approx(0.5 ** 13)
    assert scales["hiera"]["backbone.pos_embed"] == pytest.approx(0.5 ** 12)
    assert scales["hiera"][first] == pytest.approx(0.5 ** 11)
    projector = next(n for n in scales["mae"] if n.startswith("projector."))
    assert scales["mae"][projector] == scales["hiera"][projector] == 1.0


def test_epoch_stepping_holds_the_lr_within_an_epoch_and_lags_by_one():
    from ms_gpt4image.schedule import lr_schedule
    base = ["epoch_size=6", "warmup_epochs=2", "lr=1.0", "min_lr=0.0", "lr_step=epoch", "warmup_lr=0.1"]
    plain = np.asarray(lr_schedule(load_config(None, base), 4, 1.0)).reshape(6, 4)
    lagged = np.asarray(lr_schedule(load_config(None, base + ["lr_epoch_lag=1"]), 4, 1.0)).reshape(6, 4)
    assert (plain == plain[:, :1]).all() and (lagged == lagged[:, :1]).all()
    cosine = [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]  # after the warmup, over the rest
    assert plain[:, 0].tolist() == pytest.approx([0.1, 0.55] + cosine)
    assert lagged[:, 0].tolist() == pytest.approx([0.1, 0.1, 0.55] + cosine[:3])
    # training longer rebuilds the schedule for the new length; the optimizer's step indexes it
    longer = np.asarray(lr_schedule(load_config(None, base + ["epoch_size=8"]), 4, 1.0)).reshape(8, 4)
    assert longer[:2, 0].tolist() == pytest.approx([0.1, 0.55]) and longer[2, 0] == 1.0 and longer[7, 0] > 0
    from ms_gpt4image.config import ConfigError
    with pytest.raises(ConfigError, match="lr_epoch_lag"):
        load_config(None, ["lr_epoch_lag=1"])
    with pytest.raises(ConfigError, match="layer_decay_ids"):
        load_config(None, ["layer_decay_ids=hiera"])
