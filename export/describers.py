"""Describers: image -> one description. A small registry so custom backends plug in by name.

* template -- offline, no model: class name + attributes measured on that very image (object size,
  tone or colour, texture, shape, position), so two images of a class get different sentences.
* blip2    -- transformers BLIP-2 (`Blip2ForConditionalGeneration`), the paper's prompts.

A backend is a class with `describe(images, class_names) -> list[str]` and `info() -> dict`.
"""
from typing import Callable, Dict, List, Optional

import numpy as np
from PIL import Image

PROMPTS = {  # the paper's two prompts (section 4, "short" vs "long" descriptions)
    "short": "Write a one-sentence short description about this image.",
    "long": "Describe this image in detail.",
}
CAPTION_SIZE = 224  # the paper upsamples small images (CIFAR) to 224 before captioning

_DESCRIBERS: Dict[str, Callable] = {}


def register_describer(name: str):
    def wrap(cls):
        _DESCRIBERS[name] = cls
        return cls
    return wrap


def list_describers() -> List[str]:
    return sorted(_DESCRIBERS)


def create_describer(name: str, **kwargs):
    if name not in _DESCRIBERS:
        raise KeyError(f"unknown describer {name!r}; registered: {', '.join(list_describers())}")
    return _DESCRIBERS[name](**kwargs)


def resolve_prompt(prompt: str) -> str:
    return PROMPTS.get(prompt, prompt)


def upsample_for_captioning(img: Image.Image, size: int = CAPTION_SIZE) -> Image.Image:
    img = img.convert("RGB")
    if min(img.size) < size:
        scale = size / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    return img


# ---------------------------------------------------------------------------------------------
# template backend

_COLOURS = [(0, "red"), (30, "orange"), (55, "yellow"), (90, "green"), (160, "teal"), (200, "blue"),
            (260, "purple"), (310, "pink"), (345, "red")]


def _colour_name(rgb: np.ndarray) -> str:
    r, g, b = (rgb / 255.0).tolist()
    mx, mn = max(r, g, b), min(r, g, b)
    if mx - mn < 0.12:  # unsaturated: a grey level
        return "black" if mx < 0.2 else "dark grey" if mx < 0.45 else "light grey" if mx < 0.8 else "white"
    if mx == r:
        hue = (60 * (g - b) / (mx - mn)) % 360
    elif mx == g:
        hue = 60 * (b - r) / (mx - mn) + 120
    else:
        hue = 60 * (r - g) / (mx - mn) + 240
    name = min(_COLOURS, key=lambda c: min(abs(hue - c[0]), 360 - abs(hue - c[0])))[1]
    return ("dark " if mx < 0.4 else "pale " if mn > 0.7 else "") + name


def image_attributes(img: Image.Image) -> Dict[str, str]:
    """Measures simple attributes of one image; the background is estimated from the border."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    grey = rgb.mean(axis=2)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    bg = float(np.median(border))
    mask = np.abs(grey - bg) > 25
    coverage = float(mask.mean())
    if mask.sum() < 4:  # nothing stands out: describe the whole frame
        mask = np.ones_like(mask)
    ys, xs = np.nonzero(mask)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    gy, gx = np.gradient(grey)
    # texture inside the object only: the outline's own edges would call every object "patterned"
    interior = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
    texture = float(np.hypot(gx, gy)[interior].mean()) if interior.any() else 0.0
    cy, cx = ys.mean() / grey.shape[0], xs.mean() / grey.shape[1]
    return {
        "size": "large" if coverage > 0.5 else "medium-sized" if coverage > 0.25 else "small",
        "colour": _colour_name(np.median(rgb[mask], axis=0)),
        "texture": "plain" if texture < 15 else "lightly textured" if texture < 35 else "heavily patterned",
        "shape": "wider than it is tall" if w > 1.2 * h else "taller than it is wide" if h > 1.2 * w
        else "roughly as wide as it is tall",
        "position": ("near the top" if cy < 0.4 else "near the bottom" if cy > 0.6 else "")
        or ("towards the left" if cx < 0.4 else "towards the right" if cx > 0.6 else "in the centre"),
        "background": _colour_name(np.array([bg, bg, bg])) if (np.abs(border - bg) > 25).mean() < 0.5 else "busy",
    }


@register_describer("template")
class TemplateDescriber:
    """Per-image descriptions without a model: the offline default (no VLM weights reach this machine)."""

    def __init__(self, **_):
        pass

    def info(self) -> Dict:
        return {"backend": "template", "model": None, "prompt": None}

    def describe(self, images: List[Image.Image], class_names: List[str]) -> List[str]:
        out = []
        for img, name in zip(images, class_names):
            a = image_attributes(img)
            out.append(f"A {a['size']} {a['colour']} {name}, {a['texture']}, {a['shape']}, "
                       f"{a['position']} of the frame on a {a['background']} background.")
        return out


# ---------------------------------------------------------------------------------------------
# transformers backends

def pick_device_dtype(device: Optional[str], dtype: Optional[str]):
    import torch
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    return device, getattr(torch, dtype)


@register_describer("blip2")
class Blip2Describer:
    """BLIP-2 via transformers: `model` is a hub id (e.g. Salesforce/blip2-opt-2.7b) or a local path."""

    def __init__(self, model: str = "Salesforce/blip2-opt-2.7b", prompt: str = "short",
                 prompt_template: str = "Question: {prompt} Answer:", max_new_tokens: Optional[int] = None,
                 device: Optional[str] = None, dtype: Optional[str] = None, **_):
        import torch
        from transformers import Blip2ForConditionalGeneration, Blip2Processor
        self.torch = torch
        self.model_name = model
        self.prompt = resolve_prompt(prompt)
        self.prompt_template = prompt_template
        self.max_new_tokens = max_new_tokens or (30 if prompt == "short" else 120)
        self.device, self.dtype = pick_device_dtype(device, dtype)
        self.processor = Blip2Processor.from_pretrained(model)
        self.model = Blip2ForConditionalGeneration.from_pretrained(model, dtype=self.dtype).to(self.device).eval()

    def info(self) -> Dict:
        return {"backend": "blip2", "model": self.model_name, "prompt": self.prompt,
                "prompt_template": self.prompt_template, "max_new_tokens": self.max_new_tokens}

    def describe(self, images: List[Image.Image], class_names: List[str]) -> List[str]:
        images = [upsample_for_captioning(im) for im in images]
        texts = [self.prompt_template.format(prompt=self.prompt.format(class_name=c)) for c in class_names]
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with self.torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt_len = inputs["input_ids"].shape[1]
        if out.shape[1] > prompt_len and bool((out[:, :prompt_len] == inputs["input_ids"]).all()):
            out = out[:, prompt_len:]  # decoder-only LMs echo the prompt
        return [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]
