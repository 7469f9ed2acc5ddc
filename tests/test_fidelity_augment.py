"""Our ImageNet augmentations (ms_gpt4image/augment.py, wired in by data.py) against timm 0.3.2 itself
(tests/timm_reference.py): every RandAugment op at a fixed magnitude, whole RandAugment draws under equal
seeds, policy parsing and magnitude noise, random erasing boxes and statistics, mixup/cutmix (mindcv's
Mixup, which data.py uses), the random resized crop and the eval resize/crop; plus the reasons mindcv's
versions were replaced (shear, posterize, erasing fill, resize without antialiasing)."""
import math
import random
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import mindspore.dataset.transforms as mstransforms
import mindspore.dataset.vision as vision
from mindspore.dataset.vision import Inter

from ms_gpt4image import augment as A
from ms_gpt4image.config import load_config
from ms_gpt4image.data import image_ops
from timm_reference import module

aa = module("data.auto_augment")
timm_re = module("data.random_erasing")
timm_mix = module("data.mixup")

FILL = (124, 116, 104)  # timm's img_mean for the ImageNet mean
INCREASING_ONLY = ("PosterizeIncreasing", "SolarizeIncreasing", "ColorIncreasing", "ContrastIncreasing",
                   "BrightnessIncreasing", "SharpnessIncreasing")
ALL_OPS = A.RAND_OPS + INCREASING_ONLY


def _timm_transforms_module():
    """timm 0.3.2's data/transforms.py (RandomResizedCropAndInterpolation) imports torchvision, which the
    venv lacks: it is loaded against a stand-in whose `resized_crop` is torchvision 0.8's on PIL images
    (crop, then resize to (w, h)), the stand-in removed again afterwards."""
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    if "timm.data.transforms" in sys.modules:
        return sys.modules["timm.data.transforms"]
    fake = {n: types.ModuleType(n) for n in names}
    fake["torchvision.transforms.functional"].resized_crop = \
        lambda img, i, j, h, w, size, interp: img.crop((j, i, j + w, i + h)).resize((size[1], size[0]), interp)
    fake["torchvision"].transforms = fake["torchvision.transforms"]
    fake["torchvision.transforms"].functional = fake["torchvision.transforms.functional"]
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(fake)
    try:
        return module("data.transforms")
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


@pytest.fixture(scope="module")
def test_image() -> Image.Image:
    """256x200 RGB: a photo (left half), 1-px and 8-px vertical bars, a horizontal grey ramp and a
    colour gradient (right half): edges for the geometric ops, every grey level for the colour ones."""
    h, w = 200, 256
    a = np.zeros((h, w, 3), np.uint8)
    a[:, :128] = np.asarray(Image.fromarray(skdata.astronaut()).resize((128, h), Image.BICUBIC))
    a[:50, 128:, :] = (np.arange(128) % 2 * 255)[None, :, None]
    a[50:100, 128:, :] = ((np.arange(128) // 8) % 2 * 200 + 30)[None, :, None]
    a[100:150, 128:, :] = np.linspace(0, 255, 128).astype(np.uint8)[None, :, None]
    yy, xx = np.mgrid[0:50, 0:128]
    a[150:, 128:] = np.stack([xx * 2, yy * 5, 255 - xx * 2], -1).astype(np.uint8)
    return Image.fromarray(a)


def _posterize_as_old_pillow(img, bits_to_keep, **kwargs):
    """timm's posterize with the Pillow of its time: 0 bits kept gave a black image (the table i & 0);
    current Pillow raises ValueError for 0 bits, which PosterizeIncreasing reaches at magnitude 10."""
    if bits_to_keep == 0:
        return img.point([0] * 256 * len(img.getbands()))
    return aa.posterize(img, bits_to_keep, **kwargs)


@pytest.fixture(autouse=True)
def old_pillow_posterize(monkeypatch):
    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        monkeypatch.setitem(aa.NAME_TO_OP, name, _posterize_as_old_pillow)


def _diff(x, y) -> int:
    return int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max())


def _timm_op(name, img, magnitude, negate, resample, monkeypatch):
    monkeypatch.setattr(aa, "_randomly_negate", (lambda v: -v) if negate else (lambda v: v))
    level = aa.LEVEL_TO_ARG[name]
    args = level(magnitude, dict(translate_const=100, img_mean=FILL)) if level else ()
    return aa.NAME_TO_OP[name](img, *args, fillcolor=FILL, resample=resample), args


# ------------------------------------------------------------------------------------------ RandAugment


@pytest.fixture(scope="module")
def dim_photo() -> Image.Image:
    """A low-contrast photo (values 40..200): AutoContrast and Equalize have something to stretch."""
    a = np.asarray(Image.fromarray(skdata.chelsea()).resize((160, 120), Image.BICUBIC), np.float64)
    return Image.fromarray((40 + a * 160 / 255).astype(np.uint8))


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("negate", [False, True])
@pytest.mark.parametrize("resample", [Image.BILINEAR, Image.BICUBIC])
def test_each_op_matches_timm(name, negate, resample, test_image, dim_photo, monkeypatch):
    """Each of timm's RandAugment ops (15 + the 6 'Increasing' forms) at magnitude 9, sign and filter
    fixed: the same argument and the same pixels as timm's op function, on both test images."""
    altered = 0
    for img in (test_image, dim_photo):
        ref, args = _timm_op(name, img, 9, negate, resample, monkeypatch)
        arg = A.op_argument(name, 9, negate=negate)
        assert (arg,) == args or (arg is None and args == ())
        ours = A.apply_op(name, img, arg, fill=FILL, resample=resample)
        assert ours.size == ref.size and ours.mode == ref.mode
        assert _diff(ours, ref) == 0, name
        altered = max(altered, _diff(ours, img))
    assert altered > 10, name  # every op changes at least one of the images visibly at m9


def test_posterize_to_zero_bits_is_black(test_image):
    with pytest.raises(ValueError):  # why the reference needs old_pillow_posterize
        aa.posterize(test_image, 0)
    arg = A.op_argument("PosterizeIncreasing", 10)
    assert arg == 0 and not np.asarray(A.apply_op("PosterizeIncreasing", test_image, arg)).any()
    assert _diff(A.apply_op("PosterizeIncreasing", test_image, arg), _posterize_as_old_pillow(test_image, 0)) == 0


def test_op_lists_and_levels_match_timm():
    assert A.RAND_OPS == tuple(aa._RAND_TRANSFORMS)
    assert A.RAND_INCREASING_OPS == tuple(aa._RAND_INCREASING_TRANSFORMS)
    hp = dict(translate_const=100, img_mean=FILL)
    for name in ALL_OPS:
        level = aa.LEVEL_TO_ARG[name]
        for m in (0, 0.3, 2.5, 5, 7.77, 9, 10):
            for negate in (False, True):
                aa_negate, aa._randomly_negate = aa._randomly_negate, (lambda v: -v) if negate else (lambda v: v)
                try:
                    ref = level(m, hp)[0] if level else None
                finally:
                    aa._randomly_negate = aa_negate
                assert A.op_argument(name, m, negate=negate) == ref, (name, m, negate)


@pytest.mark.parametrize("policy,hparams", [
    ("m9-mstd0.5-inc1", dict(interpolation=Image.BICUBIC)),  # DeiT / ConvNeXt / Hiera (train interpolation bicubic)
    ("m9-mstd0.5-inc1", dict()),                             # interpolation 'random': bilinear or bicubic per op
    ("m7", dict(interpolation=Image.BILINEAR)),              # plain ops, fixed magnitude
    ("m10-n3-mstd1-w0", dict(interpolation=Image.BICUBIC)),  # 3 ops, weighted choice without replacement
])
def test_rand_augment_draws_match_timm(policy, hparams, test_image):
    """Whole RandAugment calls under equal seeds of `random` and numpy: the op choice (2 of 15, uniform,
    with replacement), the 0.5 apply probability, the magnitude noise, the sign and the filter are drawn
    in timm's order, so each output is timm's exactly."""
    ref = aa.rand_augment_transform("rand-" + policy, dict(translate_const=100, img_mean=FILL, **hparams))
    ours = A.parse_rand_policy("randaug-" + policy, fill=FILL,
                               interpolation=hparams.get("interpolation", A.RANDOM_FILTERS))
    small = test_image.resize((96, 75))
    changed = 0
    for seed in range(60):
        random.seed(seed)
        np.random.seed(seed)
        expected = ref(small)
        ref_next = (random.random(), np.random.random())  # both consumed the same number of draws
        random.seed(seed)
        np.random.seed(seed)
        got = ours(small)
        assert _diff(got, expected) == 0 and (random.random(), np.random.random()) == ref_next, seed
        changed += _diff(got, small) > 0
    assert 30 < changed < 60  # (1 - 0.5 ** 2) of the calls apply an op, most of them visibly


def test_policy_parsing_matches_timm():
    for policy in ("m9-mstd0.5-inc1", "m9-mstd0.5", "m7-n3", "mstd1-w0", "m10-n1-inc1"):
        ref = aa.rand_augment_transform("rand-" + policy, dict(img_mean=FILL))
        for head in ("rand", "randaug"):
            ours = A.parse_rand_policy(f"{head}-{policy}", fill=FILL)
            assert ours.num_layers == ref.num_layers
            assert [ours.magnitude] * len(ours.names) == [op.magnitude for op in ref.ops]
            assert [ours.magnitude_std] * len(ours.names) == [op.hparams.get("magnitude_std", 0) for op in ref.ops]
            assert [ours.prob] * len(ours.names) == [op.prob for op in ref.ops] == [0.5] * 15
            assert [A.OPS[n].fn for n in ours.names] and \
                [aa.NAME_TO_OP[n] for n in ours.names] == [op.aug_fn for op in ref.ops]
            if ref.choice_weights is None:
                assert ours.weights is None
            else:
                assert np.allclose(ours.weights, ref.choice_weights)
    ours = A.parse_rand_policy("randaug-m9-mstd0.5-inc1")
    assert (ours.magnitude, ours.magnitude_std, ours.num_layers, ours.names) == (9, 0.5, 2, A.RAND_INCREASING_OPS)
    for bad in ("randaug-m9-x3", "augmix-m9", "randaug-m9-inc"):
        with pytest.raises(ValueError):
            A.parse_rand_policy(bad)


def test_magnitude_noise_matches_timm(test_image):
    """mstd0.5: magnitude ~ N(9, 0.5) clipped to [0, 10], the same draws as timm's AugmentOp; and
    mindcv's parser, unlike timm's, adds that noise even when the policy has no mstd section."""
    seen = []
    op = aa.AugmentOp("Rotate", prob=1.0, magnitude=9, hparams=dict(img_mean=FILL, magnitude_std=0.5))
    op.level_fn = lambda m, hp: seen.append(m) or (0.0,)
    op.aug_fn = lambda img, *a, **k: img
    random.seed(3)
    for _ in range(4000):
        op(test_image)
    ours = A.RandAugment(magnitude=9, magnitude_std=0.5)
    random.seed(3)
    got = [ours.sample_magnitude() for _ in range(4000)]
    assert got == seen
    got = np.array(got)
    assert got.max() == 10.0 and 0.015 < np.mean(got == 10.0) < 0.035  # P(N(9, 0.5) > 10) = 2.3 %
    assert abs(np.median(got) - 9) < 0.03 and 0.45 < got[got < 10].std() < 0.5
    from mindcv.data.auto_augment import rand_augment_transform as mindcv_rand
    assert mindcv_rand("randaug-m9", {}).ops[0].magnitude_std == 0.5
    assert aa.rand_augment_transform("rand-m9", {}).ops[0].magnitude_std == 0
    assert A.parse_rand_policy("randaug-m9").magnitude_std == 0


def _bar_image():
    a = np.zeros((200, 200, 3), np.uint8)
    a[:, 98:102] = 255  # a vertical bar
    return Image.fromarray(a)


def _bar_x(img, row):
    return float(np.argwhere(np.asarray(img)[row, :, 0] > 127).mean())


def test_mindcv_shear_and_posterize_are_not_timms(test_image, monkeypatch):
    """Why augment.py exists: mindcv 0.3.0's ShearX reads timm's shear factor (0.27 at m9) as degrees,
    so a vertical bar barely tilts (timm: ~54 px over 200 rows); its posterize keeps 8 - bits bits
    (PosterizeIncreasing at m9: 7 bits, 128 levels, where timm keeps 1 bit, 2 levels)."""
    import mindcv.data.auto_augment as mc
    bar = _bar_image()
    timm_sheared, (factor,) = _timm_op("ShearX", bar, 9, False, Image.BILINEAR, monkeypatch)
    ours = A.apply_op("ShearX", bar, A.op_argument("ShearX", 9), fill=FILL, resample=Image.BILINEAR)
    monkeypatch.setattr(mc, "_randomly_negate", lambda v: v)
    (mc_factor,) = mc.LEVEL_TO_ARG["ShearX"](9, {})
    mindcv_sheared = mc.shear_x(np.asarray(bar), mc_factor, fill_value=FILL, resample=Inter.BILINEAR)
    tilt = lambda img: abs(_bar_x(img, 199) - _bar_x(img, 0))
    assert factor == mc_factor == pytest.approx(0.27)
    assert tilt(timm_sheared) == pytest.approx(0.27 * 199, abs=1.5) and tilt(ours) == tilt(timm_sheared)
    assert tilt(mindcv_sheared) < 3

    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (8, 1)))
    ramp = ramp.convert("RGB")
    timm_post, (bits,) = _timm_op("PosterizeIncreasing", ramp, 9, False, None, monkeypatch)
    ours = A.apply_op("PosterizeIncreasing", ramp, A.op_argument("PosterizeIncreasing", 9))
    mindcv_post = mc.posterize(np.asarray(ramp), *mc.LEVEL_TO_ARG["PosterizeIncreasing"](9, {}))
    assert bits == 1 and len(np.unique(np.asarray(timm_post))) == 2 and _diff(ours, timm_post) == 0
    assert len(np.unique(mindcv_post)) == 128
    assert "SolarizeAdd" not in mc.NAME_TO_OP  # one of timm's 15 rand ops mindcv lacks


# ---------------------------------------------------------------------------------------- random erasing


def test_erasing_boxes_match_timm():
    """Equal `random` seeds give timm's boxes exactly (including the draws that erase nothing)."""
    ours = A.RandomErasing(0.25, mode="pixel")
    ref = timm_re.RandomErasing(0.25, mode="pixel", max_count=1, device="cpu")
    erased = 0
    for seed in range(400):
        height, width = (224, 224) if seed % 2 else (96, 160)
        random.seed(seed)
        x = ref(torch.full((3, height, width), float("nan")))
        finite = torch.isfinite(x[0]).numpy()
        random.seed(seed)
        boxes = ours.boxes(height, width)
        if not finite.any():
            assert boxes == []
            continue
        erased += 1
        rows, cols = np.nonzero(finite)
        (top, left, h, w), = boxes
        assert (top, left, h, w) == (rows.min(), cols.min(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
        assert finite.sum() == h * w
    assert 70 < erased < 130  # re_prob 0.25


def _erasing_stats(erase, tensor_in, n, size=(3, 64, 80)):
    fractions, fills, aspects = [], [], []
    for _ in range(n):
        x = erase(tensor_in(size))
        mask = ~np.isnan(np.asarray(x[0]))
        if mask.any():
            rows, cols = np.nonzero(mask)
            aspects.append((rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1))
            fills.append(np.asarray(x)[:, mask])
        fractions.append(mask.mean())
    fills = np.concatenate(fills, axis=1)
    return dict(erased=np.mean(np.array(fractions) > 0), area=np.mean([f for f in fractions if f > 0]),
                fill_mean=fills.mean(), fill_std=fills.std(), channel_corr=np.corrcoef(fills[0], fills[1])[0, 1],
                log_aspect=np.mean(np.log(aspects)), log_aspect_std=np.std(np.log(aspects)))


def test_erasing_statistics_match_timm():
    """Independent draws (ours: numpy noise; timm: torch noise): the share of images erased, the erased
    area, the fill's mean, std and channel independence, and the aspect ratios agree."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    ours = _erasing_stats(A.RandomErasing(0.5, mode="pixel"), lambda s: np.full(s, np.nan, np.float32), 3000)
    ref = _erasing_stats(timm_re.RandomErasing(0.5, mode="pixel", device="cpu"),
                         lambda s: torch.full(s, float("nan")), 3000)
    assert abs(ours["erased"] - ref["erased"]) < 0.05 and abs(ours["erased"] - 0.5) < 0.04
    assert abs(ours["area"] - ref["area"]) < 0.012 and 0.13 < ref["area"] < 0.2
    for stats in (ours, ref):
        assert abs(stats["fill_mean"]) < 0.01 and abs(stats["fill_std"] - 1) < 0.01
        assert abs(stats["channel_corr"]) < 0.01
    assert abs(ours["log_aspect"] - ref["log_aspect"]) < 0.06
    assert abs(ours["log_aspect_std"] - ref["log_aspect_std"]) < 0.05


def test_erasing_modes_and_mindcvs_fill():
    x = np.random.default_rng(0).standard_normal((3, 32, 32)).astype(np.float32)
    random.seed(1)
    const = A.RandomErasing(1.0, mode="const")(x)
    random.seed(1)
    rand = A.RandomErasing(1.0, mode="rand")(x)
    box = const != x
    assert box.any() and (const[box] == 0).all()
    assert all(len(np.unique(rand[c][box[c]])) == 1 for c in range(3))
    assert np.array_equal(A.RandomErasing(0.0)(x), x)
    # mindcv's (MindSpore's) random erasing, what data.py used before: a constant 0 box
    mindcv_erased = vision.RandomErasing(prob=1.0, value=0)(x.copy())
    changed = mindcv_erased != x
    assert changed.any() and (mindcv_erased[changed] == 0).all()


# ------------------------------------------------------------------------------------------ mixup/cutmix


def _batch(seed, n=8, size=16):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, size, size)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32)


def test_mixup_cutmix_helpers_match_timm():
    from mindcv.data import mixup as mc_mix
    for lam in (0.05, 0.37, 0.5, 0.9):
        for seed in range(20):
            np.random.seed(seed)
            ref = timm_mix.rand_bbox((8, 3, 224, 160), lam)
            np.random.seed(seed)
            assert mc_mix.rand_bbox((8, 3, 224, 160), lam) == ref
            np.random.seed(seed)
            ref_box, ref_lam = timm_mix.cutmix_bbox_and_lam((8, 3, 224, 160), lam)
            np.random.seed(seed)
            box, got_lam = mc_mix.cutmix_bbox_and_lam((8, 3, 224, 160), lam)
            assert box == ref_box and got_lam == pytest.approx(ref_lam, abs=1e-12)
        labels = np.array([3, 1, 4, 1, 5, 9, 2, 6])
        ref = timm_mix.mixup_target(torch.from_numpy(labels), 10, lam, 0.1, device="cpu").numpy()
        assert np.allclose(mc_mix.mixup_target(labels, 10, lam, 0.1), ref, atol=1e-7)


@pytest.mark.parametrize("prob", [1.0, 0.5])
def test_batch_mixing_matches_timm(prob):
    """mindcv's Mixup as data.py builds it for the DeiT recipe (batch mode, mixup 0.8, cutmix 1.0, switch
    0.5, smoothing 0.1) against timm's Mixup._mix_batch + mixup_target (timm's __call__ puts targets on CUDA) under
    equal numpy seeds: the same lambda, box, mixed images and soft targets."""
    from ms_gpt4image.data import _mixup
    kw = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=prob, switch_prob=0.5, label_smoothing=0.1, num_classes=10)
    ours = _mixup(load_config("configs/imagenet_deit_small.yaml", [f"mixup_prob={prob}"]), {"num_classes": 10})
    ref = timm_mix.Mixup(**kw)
    mix = ours.mix  # (drawn per micro-batch of 128 rows: data.PerMicroBatch; the test's batch is one)
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.mix_prob, mix.switch_prob, mix.label_smoothing, mix.mode,
            mix.correct_lam, mix.cutmix_minmax, ours.micro) == (0.8, 1.0, prob, 0.5, 0.1, "batch", True, None, 128)
    kinds = set()
    for seed in range(40):
        x, y = _batch(seed)
        np.random.seed(seed)
        ref_x = torch.from_numpy(x.copy())
        lam = ref._mix_batch(ref_x)
        ref_y = timm_mix.mixup_target(torch.from_numpy(y.astype(np.int64)), 10, lam, 0.1, device="cpu")
        np.random.seed(seed)
        got_x, got_y = ours(x.copy(), y.copy())
        assert np.allclose(got_x, ref_x.numpy(), atol=1e-6), seed
        assert np.allclose(got_y, ref_y.numpy(), atol=1e-6), seed
        mixed = ~np.isclose(got_x, x)
        kinds.add("none" if not mixed.any() else "cutmix" if np.isclose(got_x, x[::-1]).any() and
                  (np.isclose(got_x, x) | np.isclose(got_x, x[::-1])).all() else "mixup")
    assert {"mixup", "cutmix"} <= kinds and ("none" in kinds) == (prob < 1)


# ------------------------------------------------------------------------------------ crop and resize


def test_random_resized_crop_matches_timm():
    """Equal seeds give timm's RandomResizedCropAndInterpolation crop box, filter and pixels
    (torchvision's resized_crop on PIL: crop, then resize), including the fallback centre crop."""
    T = _timm_transforms_module()
    rng = np.random.default_rng(0)
    for interpolation, filters in (("random", A.RANDOM_FILTERS), ("bicubic", Image.BICUBIC)):
        ref = T.RandomResizedCropAndInterpolation(56, scale=(0.08, 1.0), interpolation=interpolation)
        ours = A.RandomResizedCrop(56, scale=(0.08, 1.0), interpolation=filters)
        for seed, (w, h) in enumerate([(500, 375), (375, 500), (120, 90), (400, 20), (20, 400), (64, 64)] * 5):
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            random.seed(seed)
            i, j, ch, cw = T.RandomResizedCropAndInterpolation.get_params(img, ref.scale, ref.ratio)
            random.seed(seed)
            assert ours.params(w, h) == (i, j, ch, cw)
            random.seed(seed)
            expected = ref(img)
            random.seed(seed)
            assert _diff(ours(img), expected) == 0 and expected.size == (56, 56)
    random.seed(0)  # a 400x20 strip never fits 3/4..4/3 at any scale: the fallback is the centre 27x20
    assert A.RandomResizedCrop(56).params(400, 20) == (0, (400 - 27) // 2, 20, 27)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_eval_geometry_is_timms(interpolation):
    """timm's transforms_imagenet_eval, written out as the PIL calls torchvision makes: Resize(int(224 /
    crop_pct)) scales the shorter side to it (the longer one int-truncated), CenterCrop(224) takes
    top/left = round((side - 224) / 2)."""
    filt = A.pil_filter(interpolation, train=False)
    rng = np.random.default_rng(1)
    cases = {  # (w, h, crop_pct): resized (w, h), crop (left, top)
        (500, 375, 0.875): ((341, 256), (58, 16)),
        (375, 500, 0.875): ((256, 341), (16, 58)),
        (333, 500, 0.9): ((248, 372), (12, 74)),
        (256, 256, 0.875): ((256, 256), (16, 16)),
        (1000, 224, 1.0): ((1000, 224), (388, 0)),
        (640, 427, 0.95): ((352, 235), (64, 6)),
        (500, 381, 0.875): ((335, 256), (56, 16)),  # 335.96 truncated
        (500, 379, 0.875): ((337, 256), (56, 16)),  # (337 - 224) / 2 = 56.5 rounds to even
        (381, 500, 0.875): ((256, 335), (16, 56)),
    }
    for (w, h, crop_pct), (resized, (left, top)) in cases.items():
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(a)
        short = int(math.floor(224 / crop_pct))
        assert min(resized) == short
        big = img if resized == (w, h) else img.resize(resized, filt)
        expected = np.asarray(big.crop((left, top, left + 224, top + 224)))
        got = A.EvalImage(224, crop_pct, filt)(a)
        assert got.shape == (224, 224, 3) and np.array_equal(got, expected), (w, h, crop_pct)


def test_train_flip_is_a_fair_mirror():
    a = np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    whole = A.RandomResizedCrop(40, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    random.seed(0)
    outs = [np.asarray(A.TrainTransform(whole, hflip=0.5).augment_pil(Image.fromarray(a))) for _ in range(400)]
    flipped = [np.array_equal(o, a[:, ::-1]) for o in outs]
    assert all(f or np.array_equal(o, a) for f, o in zip(flipped, outs))
    assert 0.42 < np.mean(flipped) < 0.58
    unflipped = A.TrainTransform(whole, hflip=0.0)
    assert all(np.array_equal(np.asarray(unflipped.augment_pil(Image.fromarray(a))), a) for _ in range(50))


def test_resize_antialiases_as_pil_does():
    """1-px black/white stripes shrunk 500 -> 256: PIL (every reference, and ours now) averages them to
    grey; MindSpore's Resize (mindcv's transforms) keeps most of the contrast as aliasing."""
    a = np.zeros((500, 500, 3), np.uint8)
    a[:, ::2] = 255
    for filt, inter in ((Image.BILINEAR, Inter.BILINEAR), (Image.BICUBIC, Inter.BICUBIC)):
        pil = np.asarray(Image.fromarray(a).resize((256, 256), filt), np.float64)
        mindspore = vision.Resize((256, 256), inter)(a).astype(np.float64)
        assert pil.std() < 5 and mindspore.std() > 60
    ours = A.EvalImage(224, 224 / 256, Image.BILINEAR)(a).astype(np.float64)
    assert ours.std() < 5


# -------------------------------------------------------------------------------------- the data.py ops


def _cfg(**overrides):
    base = ["transforms=imagenet", "image_size=64", "mean=[0.485,0.456,0.406]", "std=[0.229,0.224,0.225]",
            "interpolation=bicubic", "crop_pct=0.875"]
    return load_config(None, base + [f"{k}={v}" for k, v in overrides.items()])


def test_data_ops_are_these_transforms(test_image):
    """image_ops(imagenet): eval = Decode, our resize/crop, normalise; train = Decode, then one Python op
    (crop, flip, RandAugment, normalise, pixel erasing). Run eagerly, they give the reference arithmetic."""
    import io
    buf = io.BytesIO()
    test_image.save(buf, "PNG")
    encoded = np.frombuffer(buf.getvalue(), np.uint8)
    cfg = _cfg()
    mean, std = np.array(cfg["mean"]), np.array(cfg["std"])
    ops = image_ops(cfg, train=False)
    assert isinstance(ops[0], vision.Decode)
    got = mstransforms.Compose(ops)(encoded)
    crop = np.asarray(A.resize_center_crop(test_image, 64, 0.875, Image.BICUBIC), np.float64) / 255
    assert got.shape == (3, 64, 64) and np.allclose(got, ((crop - mean) / std).transpose(2, 0, 1), atol=1e-5)

    train = image_ops(_cfg(auto_augment="randaug-m9-mstd0.5-inc1", re_prob=1.0), train=True)
    assert [type(op) for op in train] == [vision.Decode, A.TrainTransform]
    t = train[1]
    assert isinstance(t.augment, A.RandAugment) and t.augment.fill == (124, 116, 104)
    assert t.augment.names == A.RAND_INCREASING_OPS and (t.augment.magnitude, t.augment.magnitude_std) == (9, 0.5)
    assert t.augment.interpolation == Image.BICUBIC and t.crop.interpolation == Image.BICUBIC
    assert t.erasing.mode == "pixel" and t.erasing.prob == 1.0 and t.hflip == 0.5
    # the op = our PIL steps, then (x / 255 - mean) / std, then erasing, under the same seeds
    for seed in range(3):
        random.seed(seed)
        np.random.seed(seed)
        out = mstransforms.Compose(train)(encoded)
        random.seed(seed)
        np.random.seed(seed)
        pil = np.asarray(t.augment_pil(test_image), np.float64) / 255
        erased = t.erasing(((pil - mean) / std).transpose(2, 0, 1).astype(np.float32))
        assert out.shape == (3, 64, 64) and out.dtype == np.float32 and out.flags.c_contiguous
        assert np.allclose(out, erased, atol=1e-5)
        assert t(np.asarray(test_image)).shape == t(encoded).shape == (3, 64, 64)  # decoded or encoded input
    jitter = image_ops(_cfg(color_jitter=0.4, interpolation="random"), train=True)[1]
    assert isinstance(jitter.augment, A.ColorJitter) and jitter.crop.interpolation == A.RANDOM_FILTERS
    assert jitter.erasing is None and jitter.augment.parts[0][1] == 0.4
    other = image_ops(_cfg(auto_augment="autoaug"), train=True)[1]  # mindcv's AutoAugment, kept as it was
    random.seed(0)
    assert other(encoded).shape == (3, 64, 64)


@pytest.mark.parametrize("normalize", [True, False])
def test_stacked_batch_is_the_images_one_by_one(normalize, test_image):
    """TrainTransform.stack (the batch workers write each image into the batch) equals np.stack of its
    calls under the same seeds, to the bit: RandAugment, flip, normalisation, pixel erasing (float32),
    or the uint8 crop (device_normalize)."""
    import io
    images = []
    for k, size in enumerate([(64, 48), (40, 90), (33, 33)]):
        buf = io.BytesIO()
        test_image.resize(size).rotate(30 * k).save(buf, "PNG")
        images.append(np.frombuffer(buf.getvalue(), np.uint8))
    t = A.TrainTransform(A.RandomResizedCrop(24), augment=A.parse_rand_policy("randaug-m9-mstd0.5-inc1"),
                         erasing=A.RandomErasing(0.5) if normalize else None, normalize=normalize)
    random.seed(3)
    np.random.seed(3)
    want = np.stack([t(image) for image in images * 4])
    random.seed(3)
    np.random.seed(3)
    got = t.stack(images * 4)
    assert got.dtype == (np.float32 if normalize else np.uint8) and got.shape == (12, 3, 24, 24)
    np.testing.assert_array_equal(got, want)
    assert len({row.tobytes() for row in got}) == 12


def _numpy_draws(_):
    return np.random.random(4)


@pytest.mark.parametrize("processes", [True, False])
def test_pipeline_workers_draw_different_augmentations(processes):
    """In a MindSpore map with 2 workers (threads or processes) 16 copies of one image come out 16
    different, and so do numpy's draws (op choice, erasing noise): MindSpore reseeds worker processes
    (seed + worker id) rather than leaving them the parent's numpy state."""
    import mindspore.dataset as ds
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    t = A.TrainTransform(A.RandomResizedCrop(16), augment=A.parse_rand_policy("randaug-m9-mstd0.5-inc1"),
                         erasing=A.RandomErasing(0.5))
    seed = ds.config.get_seed()
    try:
        for op in (t, _numpy_draws):
            ds.config.set_seed(7)  # as create_dataset does with the config's seed
            data = ds.NumpySlicesDataset({"image": np.stack([img] * 16)}, shuffle=False)
            data = data.map([op], input_columns="image", num_parallel_workers=2, python_multiprocessing=processes)
            outs = [row[0] for row in data.create_tuple_iterator(num_epochs=1, output_numpy=True)]
            assert len(outs) == 16 and len({o.tobytes() for o in outs}) == 16, op
    finally:
        ds.config.set_seed(seed)


def test_color_jitter_ranges():
    """torchvision's ColorJitter(0.4, 0.4, 0.4): factors uniform in [0.6, 1.4], in a random order."""
    img = Image.fromarray(np.full((8, 8, 3), 100, np.uint8))
    jitter = A.ColorJitter(0.4, 0.4, 0.4)
    random.seed(0)
    means = [np.asarray(jitter(img), np.float64).mean() for _ in range(500)]
    assert 60 - 1 <= min(means) and max(means) <= 140 + 1 and np.std(means) > 15  # brightness moves a flat image
