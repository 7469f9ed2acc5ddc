"""ImageNet training and eval transforms that match timm 0.3.2's (`timm.data.transforms_factory`:
transforms_imagenet_train / transforms_imagenet_eval), the input pipeline of DeiT, ConvNeXt, MAE/Hiera
fine-tuning and the GPT4Image authors' code. tests/test_fidelity_augment.py compares every piece with
timm 0.3.2 itself.

Why our own and not mindcv's (0.3.0): its RandAugment runs timm's op table through MindSpore ops that
read the arguments differently (shear: timm's shear *factor* ~0.27 is read as degrees, so shearing barely
moves a pixel; posterize keeps 8 - bits bits instead of bits; no SolarizeAdd; a default magnitude noise of
0.5), its random erasing fills with 0 where the references draw per-pixel normal noise (re_mode 'pixel'),
and MindSpore's Resize does not average when it shrinks (aliasing), while every reference resizes with PIL
(torchvision on PIL images), which does. So these transforms work on PIL images, as timm's do, and run
in the MindSpore pipeline as Python ops after MindSpore's Decode (train: one op from the decoded image to
the normalised, erased CHW array; eval: resize and crop before MindSpore's Normalize).

Randomness comes from Python's `random` and numpy's global generator, drawn in the same order as timm
draws them (so with equal seeds a test gets timm's crop and ops exactly). MindSpore's `ds.config.set_seed`
(data.py calls it with the config's seed) seeds both, and reseeds each Python worker process with seed +
worker id, so worker processes do not repeat each other's draws. (For its default seed 5489 MindSpore
skips that: forked workers would then share numpy's state, which draws the RandAugment ops and the
erasing noise.)

Train, in timm's order (MindSpore's Decode, then one Python op, TrainTransform): RandomResizedCrop
(+interpolation) -> horizontal flip -> RandAugment or colour jitter -> normalised CHW float32 ->
RandomErasing. (MindSpore's Decode gives PIL's pixels for JPEG: both are libjpeg-turbo.)
Eval: resize the shorter side to int(size / crop_pct), centre crop `size`.
"""
import io
import math
import os
import random
import re
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# config `interpolation` name -> PIL filter. "random" is timm's default for training: each crop (and
# each geometric RandAugment op) picks bilinear or bicubic; eval then uses bilinear, as timm does.
PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "pilcubic": Image.BICUBIC,
               "nearest": Image.NEAREST, "area": Image.BOX}
RANDOM_FILTERS = (Image.BILINEAR, Image.BICUBIC)
Filter = Union[int, Tuple[int, ...]]


def pil_filter(name: str, train: bool = True) -> Filter:
    if name == "random":
        return RANDOM_FILTERS if train else Image.BILINEAR
    return PIL_FILTERS[name]


def _pick(filters: Filter) -> int:
    return random.choice(filters) if isinstance(filters, tuple) else filters


# ---------------------------------------------------------------------------------------------------
# RandAugment (timm 0.3.2's auto_augment.py: _RAND_TRANSFORMS, _RAND_INCREASING_TRANSFORMS, AugmentOp)

MAX_LEVEL = 10.0


def _affine(img, matrix, fill, resample):
    # PIL's AFFINE maps each output pixel (x, y) to the input pixel (a x + b y + c, d x + e y + f)
    return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def _solarize_add(img, add, threshold=128):
    # adds `add` (saturating) to the values below `threshold`, the same table for every channel
    table = [min(255, v + add) if v < threshold else v for v in range(256)]
    return img.point(table * len(img.getbands()))


def _posterize(img, bits):
    if bits >= 8:
        return img
    if bits <= 0:
        # PosterizeIncreasing at magnitude 10 (reached by mstd noise) keeps 0 bits: a black image, which
        # the Pillow of timm 0.3.2's time returned; current Pillow refuses 0 bits with a ValueError
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits)


class Op(NamedTuple):
    """One RandAugment op. level(magnitude 0..10, translate_pct) gives the op's argument size; `signed`
    ops negate it with probability 1/2; `offset` is added after the sign (the 'Increasing' enhance ops
    move away from 1.0, the identity); `geometric` ops resample (and draw their filter) and fill."""
    level: Optional[Callable[[float, float], float]]
    fn: Callable  # fn(img, arg, fill, resample) -> img
    signed: bool = False
    offset: float = 0.0
    geometric: bool = False


def _enhance(kind):
    return lambda img, f, fill, rs: kind(img).enhance(f)


_UNIFORM_ENHANCE = lambda m, _: m / MAX_LEVEL * 1.8 + 0.1      # [0.1, 1.9], strength not monotonic in m
_INCREASING_ENHANCE = lambda m, _: m / MAX_LEVEL * 0.9         # 1 +- [0, 0.9]

OPS = {
    "AutoContrast": Op(None, lambda img, a, fill, rs: ImageOps.autocontrast(img)),
    "Equalize": Op(None, lambda img, a, fill, rs: ImageOps.equalize(img)),
    "Invert": Op(None, lambda img, a, fill, rs: ImageOps.invert(img)),
    "Rotate": Op(lambda m, _: m / MAX_LEVEL * 30.0, lambda img, deg, fill, rs: img.rotate(deg, resample=rs, fillcolor=fill),
                 signed=True, geometric=True),
    # bits kept: 'Posterize' keeps 0..4 bits rising with m (milder), 'PosterizeIncreasing' 4..0 (harsher)
    "Posterize": Op(lambda m, _: int(m / MAX_LEVEL * 4), lambda img, b, fill, rs: _posterize(img, b)),
    "PosterizeIncreasing": Op(lambda m, _: 4 - int(m / MAX_LEVEL * 4), lambda img, b, fill, rs: _posterize(img, b)),
    # threshold: values >= it are inverted; 256 inverts nothing
    "Solarize": Op(lambda m, _: int(m / MAX_LEVEL * 256), lambda img, t, fill, rs: ImageOps.solarize(img, t)),
    "SolarizeIncreasing": Op(lambda m, _: 256 - int(m / MAX_LEVEL * 256),
                             lambda img, t, fill, rs: ImageOps.solarize(img, t)),
    "SolarizeAdd": Op(lambda m, _: int(m / MAX_LEVEL * 110), lambda img, a, fill, rs: _solarize_add(img, a)),
    "Color": Op(_UNIFORM_ENHANCE, _enhance(ImageEnhance.Color)),
    "ColorIncreasing": Op(_INCREASING_ENHANCE, _enhance(ImageEnhance.Color), signed=True, offset=1.0),
    "Contrast": Op(_UNIFORM_ENHANCE, _enhance(ImageEnhance.Contrast)),
    "ContrastIncreasing": Op(_INCREASING_ENHANCE, _enhance(ImageEnhance.Contrast), signed=True, offset=1.0),
    "Brightness": Op(_UNIFORM_ENHANCE, _enhance(ImageEnhance.Brightness)),
    "BrightnessIncreasing": Op(_INCREASING_ENHANCE, _enhance(ImageEnhance.Brightness), signed=True, offset=1.0),
    "Sharpness": Op(_UNIFORM_ENHANCE, _enhance(ImageEnhance.Sharpness)),
    "SharpnessIncreasing": Op(_INCREASING_ENHANCE, _enhance(ImageEnhance.Sharpness), signed=True, offset=1.0),
    # shear factor in [-0.3, 0.3]: x_in = x + s * y (a vertical line tilts by s, ~60 px over 200 rows)
    "ShearX": Op(lambda m, _: m / MAX_LEVEL * 0.3, lambda img, s, fill, rs: _affine(img, (1, s, 0, 0, 1, 0), fill, rs),
                 signed=True, geometric=True),
    "ShearY": Op(lambda m, _: m / MAX_LEVEL * 0.3, lambda img, s, fill, rs: _affine(img, (1, 0, 0, s, 1, 0), fill, rs),
                 signed=True, geometric=True),
    # shift by a fraction (up to translate_pct, 0.45) of the width / height
    "TranslateXRel": Op(lambda m, pct: m / MAX_LEVEL * pct,
                        lambda img, p, fill, rs: _affine(img, (1, 0, p * img.size[0], 0, 1, 0), fill, rs),
                        signed=True, geometric=True),
    "TranslateYRel": Op(lambda m, pct: m / MAX_LEVEL * pct,
                        lambda img, p, fill, rs: _affine(img, (1, 0, 0, 0, 1, p * img.size[1]), fill, rs),
                        signed=True, geometric=True),
}

# the op lists, in timm's order (the order matters: ops are drawn by index)
RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                       "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                       "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
# timm's weight set 0 (policy section 'w0'), by position in the op list
_CHOICE_WEIGHTS_0 = (0.025, 0.005, 0, 0.3, 0, 0.005, 0.005, 0.025, 0.005, 0.005, 0.025, 0.2, 0.2, 0.1, 0.1)


def op_argument(name: str, magnitude: float, negate: bool = False, translate_pct: float = 0.45):
    """The argument `name` gets at `magnitude` (with its random sign fixed); None for argument-free ops."""
    op = OPS[name]
    if op.level is None:
        return None
    arg = op.level(magnitude, translate_pct)
    arg = -arg if op.signed and negate else arg
    return arg + op.offset if op.offset else arg  # (integer arguments stay integers)


def apply_op(name: str, img: Image.Image, arg, fill=(128, 128, 128), resample=Image.BILINEAR) -> Image.Image:
    return OPS[name].fn(img, arg, tuple(fill), resample)


class RandAugment:
    """timm's RandAugment: `num_layers` ops drawn uniformly with replacement (without, by `weights`); each
    applied with probability `prob`, at a magnitude drawn from N(magnitude, magnitude_std) clipped to
    [0, 10], with a random sign where the op has one, geometric ops resampling with `interpolation`
    (a tuple: one drawn per op) and filling uncovered pixels with `fill` (timm: the mean colour)."""

    def __init__(self, magnitude: float = 10.0, num_layers: int = 2, magnitude_std: float = 0.0,
                 increasing: bool = False, weights: Optional[Sequence[float]] = None, prob: float = 0.5,
                 fill=(128, 128, 128), interpolation: Filter = RANDOM_FILTERS, translate_pct: float = 0.45):
        self.names = RAND_INCREASING_OPS if increasing else RAND_OPS
        self.magnitude, self.num_layers, self.magnitude_std = magnitude, num_layers, magnitude_std
        self.weights = None if weights is None else np.asarray(weights, float) / np.sum(weights)
        self.prob, self.fill, self.interpolation, self.translate_pct = prob, tuple(fill), interpolation, translate_pct

    def sample_magnitude(self) -> float:
        m = self.magnitude
        if self.magnitude_std > 0:
            m = random.gauss(m, self.magnitude_std)
        return min(MAX_LEVEL, max(0.0, m))

    def apply_random(self, name: str, img: Image.Image) -> Image.Image:
        """One op with its random parts, drawn in timm's AugmentOp order: apply?, magnitude, sign, filter."""
        if self.prob < 1.0 and random.random() > self.prob:
            return img
        op = OPS[name]
        magnitude = self.sample_magnitude()
        arg = None
        if op.level is not None:
            arg = op_argument(name, magnitude, negate=op.signed and random.random() > 0.5,
                              translate_pct=self.translate_pct)
        resample = _pick(self.interpolation) if op.geometric else None
        return op.fn(img, arg, self.fill, resample)

    def __call__(self, img: Image.Image) -> Image.Image:
        chosen = np.random.choice(len(self.names), self.num_layers, replace=self.weights is None, p=self.weights)
        for i in chosen:
            img = self.apply_random(self.names[i], img)
        return img


def parse_rand_policy(policy: str, fill=(128, 128, 128), interpolation: Filter = RANDOM_FILTERS) -> RandAugment:
    """'rand-m9-mstd0.5-inc1' (timm) or 'randaug-m9-mstd0.5-inc1' (mindcv's spelling, our configs) ->
    RandAugment. Sections: m magnitude (default 10), n ops per image (2), mstd magnitude std (0: fixed;
    mindcv defaults to 0.5), inc1 the 'Increasing' op list, w0 timm's op weights. Unlike timm, which
    reads 'inc0' as true (bool of a non-empty string) and skips sections without a number, 'inc0' means
    off and an unknown section is an error."""
    head, *sections = policy.split("-")
    if head not in ("rand", "randaug"):
        raise ValueError(f"{policy!r}: not a RandAugment policy (rand-... or randaug-...)")
    kw = dict(magnitude=MAX_LEVEL, num_layers=2, magnitude_std=0.0, increasing=False, weights=None)
    for section in sections:
        match = re.fullmatch(r"([a-z]+)(\d[\d.]*)", section)
        key, value = match.groups() if match else (None, None)
        if key == "m":
            kw["magnitude"] = int(value)
        elif key == "n":
            kw["num_layers"] = int(value)
        elif key == "mstd":
            kw["magnitude_std"] = float(value)
        elif key == "inc":
            kw["increasing"] = int(value) != 0
        elif key == "w" and value == "0":
            kw["weights"] = _CHOICE_WEIGHTS_0
        else:
            raise ValueError(f"{policy!r}: unknown RandAugment section {section!r} (m<int>, n<int>, mstd<float>, "
                             f"inc<0|1>, w0)")
    return RandAugment(fill=fill, interpolation=interpolation, **kw)


class ColorJitter:
    """torchvision's ColorJitter(b, c, s) on PIL images (timm's train transform when there is no
    auto-augment policy): brightness, contrast and saturation factors each uniform in
    [max(0, 1 - x), 1 + x], applied in a random order."""

    def __init__(self, brightness: float, contrast: float, saturation: float):
        self.parts = [(ImageEnhance.Brightness, brightness), (ImageEnhance.Contrast, contrast),
                      (ImageEnhance.Color, saturation)]

    def __call__(self, img: Image.Image) -> Image.Image:
        steps = [(kind, random.uniform(max(0.0, 1 - x), 1 + x)) for kind, x in self.parts if x > 0]
        random.shuffle(steps)
        for kind, factor in steps:
            img = kind(img).enhance(factor)
        return img


# ---------------------------------------------------------------------------------------------------
# geometry: timm's RandomResizedCropAndInterpolation, torchvision's Resize(int) + CenterCrop, all PIL


class RandomResizedCrop:
    """A crop of `scale` of the area at a log-uniform aspect ratio in `ratio` (10 tries, then the
    centre crop closest to `ratio`), resized to size x size with PIL (averaging when it shrinks)."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation: Filter = Image.BILINEAR):
        self.size, self.scale, self.ratio, self.interpolation = size, tuple(scale), tuple(ratio), interpolation

    def params(self, width: int, height: int) -> Tuple[int, int, int, int]:
        """(top, left, h, w) of the crop."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = random.uniform(*self.scale) * area
            aspect = math.exp(random.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if w <= width and h <= height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        aspect = width / height  # no try fitted: the centre crop clipped to the ratio range
        if aspect < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif aspect > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Image.Image) -> Image.Image:
        top, left, h, w = self.params(*img.size)
        # crop, then resize: the crop's edges are the resampler's image borders (torchvision's resized_crop)
        return img.crop((left, top, left + w, top + h)).resize((self.size, self.size), _pick(self.interpolation))


def resize_center_crop(img: Image.Image, size: int, crop_pct: float, interpolation: int) -> Image.Image:
    """timm's eval geometry: shorter side to int(size / crop_pct) (the longer one scaled and truncated,
    torchvision's Resize(int)), then the centre size x size (torchvision's CenterCrop rounding)."""
    short = int(math.floor(size / crop_pct))
    w, h = img.size
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    if new != (w, h):
        img = img.resize(new, interpolation)
    w, h = new
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


# ---------------------------------------------------------------------------------------------------
# the pipeline's Python ops (module-level classes: picklable for MindSpore's worker processes)


class RankSalt:
    """Every rank seeds its pipeline alike (the same seed gives every rank the same shuffle, which
    MindRecord sharding and repeated augmentation need), so without more the ranks would draw the same
    random numbers, augmentations and mixup/cutmix alike, row for row; the references seed each rank
    apart (DeiT and ConvNeXt: seed + rank, in the main process, where timm's Mixup draws, and in every
    loader worker). Called first by each of a pipeline's random Python ops (the map's TrainTransform, the
    mixing batch op's PerMicroBatch), it moves, for a rank > 0, the generators of the process the op runs in
    (the main one or a worker) to a state of their own derived from the seeded state and the rank, once per
    op and process: reproducible, and different per rank."""

    def __init__(self, rank: int = 0):
        self.rank, self.salted_in = rank, None  # the pid of the process whose generators carry the salt

    def __call__(self) -> None:
        if self.rank and self.salted_in != os.getpid():
            self.salted_in = os.getpid()
            random.seed(random.getrandbits(64) * 1_000_003 + self.rank)
            np.random.seed(np.random.SeedSequence([int(np.random.randint(2 ** 31)), self.rank]).generate_state(1))


class TrainTransform:
    """The training transform after decoding, as one Python op (each op boundary in a MindSpore map
    costs a copy and, with threads, the GIL): a decoded HWC uint8 RGB array (or encoded bytes, decoded
    by PIL) -> random resized crop -> horizontal flip with probability `hflip` -> `augment` (RandAugment,
    colour jitter or None) -> (x / 255 - mean) / std as CHW float32 -> `erasing` (RandomErasing or None).
    With `normalize=False` it stops before the normalisation and returns the CHW uint8 crop (the device
    normalises it: device_input.py; random erasing needs the normalised image, so not with `erasing`).
    `rank`: its draws are this rank's own (RankSalt)."""

    def __init__(self, crop: RandomResizedCrop, hflip: float = 0.5, augment: Optional[Callable] = None,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), erasing: Optional["RandomErasing"] = None,
                 rank: int = 0, normalize: bool = True):
        if erasing is not None and not normalize:
            raise ValueError("random erasing works on the normalised float image: it needs normalize=True")
        self.crop, self.hflip, self.augment, self.erasing, self.salt = crop, hflip, augment, erasing, RankSalt(rank)
        self.normalize = normalize
        self.shift = (255 * np.asarray(mean, np.float32)).reshape(-1, 1, 1)
        self.scale = (1 / (255 * np.asarray(std, np.float32))).reshape(-1, 1, 1)

    def augment_pil(self, img: Image.Image) -> Image.Image:
        img = self.crop(img)
        if self.hflip > 0 and random.random() < self.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return img if self.augment is None else self.augment(img)

    def __call__(self, encoded, out: Optional[np.ndarray] = None) -> np.ndarray:
        """-> the CHW image, written into `out` (a row of a batch: stack) where given."""
        self.salt()
        chw = np.asarray(self.augment_pil(decode(encoded))).transpose(2, 0, 1)
        if not self.normalize:
            if out is None:
                return np.ascontiguousarray(chw)
            out[...] = chw
            return out
        out = np.empty(chw.shape, np.float32) if out is None else out
        np.subtract(chw, self.shift, out=out)  # the float32 image less the mean, in one pass
        out *= self.scale
        return out if self.erasing is None else self.erasing(out, inplace=True)

    def stack(self, encoded: Sequence) -> np.ndarray:
        """The images of `encoded`, in turn, written straight into one N x C x H x W batch: what np.stack of
        their calls gives, without a second copy of every image (8% of a DeiT batch worker's time)."""
        first = self(encoded[0])
        batch = np.empty((len(encoded),) + first.shape, first.dtype)
        batch[0] = first
        for row, image in zip(batch[1:], encoded[1:]):
            self(image, out=row)
        return batch


def decode(encoded) -> Image.Image:
    """Encoded bytes (bytes, numpy.bytes_ or a 1-D uint8 array) or an HWC uint8 array -> RGB PIL image."""
    if isinstance(encoded, np.ndarray) and encoded.ndim == 3:
        return Image.fromarray(np.asarray(encoded, dtype=np.uint8))
    raw = encoded.tobytes() if isinstance(encoded, np.ndarray) else bytes(encoded)
    with Image.open(io.BytesIO(raw)) as img:
        return img.convert("RGB")


class EvalImage:
    """HWC uint8 RGB array -> HWC uint8 array through resize_center_crop."""

    def __init__(self, size: int, crop_pct: float, interpolation: int = Image.BILINEAR):
        self.size, self.crop_pct, self.interpolation = size, crop_pct, interpolation

    def __call__(self, array: np.ndarray) -> np.ndarray:
        img = Image.fromarray(np.asarray(array, dtype=np.uint8))
        return np.asarray(resize_center_crop(img, self.size, self.crop_pct, self.interpolation))


class RandomErasing:
    """timm's RandomErasing on one normalised CHW float32 image: with probability `prob`, 1..max_count
    boxes, each of area uniform in [min_area, max_area] / count of the image and log-uniform aspect ratio
    in [min_aspect, 1 / min_aspect] (10 tries each), filled by `mode`: 'pixel' per-pixel N(0, 1),
    'rand' one N(0, 1) value per channel, 'const' 0 (the normalised mean)."""

    def __init__(self, prob: float, mode: str = "pixel", min_area: float = 0.02, max_area: float = 1 / 3,
                 min_aspect: float = 0.3, min_count: int = 1, max_count: Optional[int] = None):
        if mode not in ("pixel", "rand", "const"):
            raise ValueError(f"random erasing mode {mode!r}: pixel, rand or const")
        self.prob, self.mode, self.min_area, self.max_area = prob, mode, min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        self.min_count, self.max_count = min_count, max_count or min_count

    def boxes(self, height: int, width: int):
        """The (top, left, h, w) boxes of one draw (empty when the image is left alone)."""
        if random.random() > self.prob:
            return []
        count = self.min_count if self.min_count == self.max_count else random.randint(self.min_count, self.max_count)
        out = []
        for _ in range(count):
            for _ in range(10):
                target = random.uniform(self.min_area, self.max_area) * height * width / count
                aspect = math.exp(random.uniform(*self.log_aspect))
                h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
                if w < width and h < height:
                    out.append((random.randint(0, height - h), random.randint(0, width - w), h, w))
                    break
        return out

    def __call__(self, image: np.ndarray, inplace: bool = False) -> np.ndarray:
        """`inplace`: erase `image` itself (a float32 array of the caller's) instead of a copy."""
        channels, height, width = image.shape
        boxes = self.boxes(height, width)
        if not boxes:
            return image
        if not inplace:
            image = np.array(image, dtype=np.float32)  # a writable copy
        for top, left, h, w in boxes:
            if self.mode == "pixel":
                fill = np.random.standard_normal((channels, h, w))
            elif self.mode == "rand":
                fill = np.random.standard_normal((channels, 1, 1))
            else:
                fill = 0.0
            image[:, top:top + h, left:left + w] = fill
        return image
