"""Describers: image -> one description. A small registry so custom backends plug in by name.

* template -- offline, no model: class name + attributes measured on that very image (object size,
  tone or colour, texture, shape, position), so two images of a class get different sentences.
* blip2, instructblip, llava, llava-next -- the paper's captioners and their successors on transformers;
* vlm      -- any image-text-to-text chat model on the hub (Qwen2-VL, SmolVLM, ...) via its chat template.

MiniGPT-4 is not on transformers; `instructblip` (Salesforce/instructblip-vicuna-7b) is its closest
equivalent. A backend is a class with `describe(images, class_names) -> list[str]` and `info() -> dict`
(JSON-able; it identifies the describer in the output's meta and in the description cache). Register
your own with `@register_describer("name")` in a module and pass `describe --plugin module.or.file.py`.
"""
from pathlib import Path
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


def describer_info(name: str, **kwargs) -> Dict:
    """The describer's info() without loading a model where its class can say it from the arguments
    (`info_for`, as the transformers backends do); otherwise the describer is built and asked."""
    if name not in _DESCRIBERS:
        raise KeyError(f"unknown describer {name!r}; registered: {', '.join(list_describers())}")
    info_for = getattr(_DESCRIBERS[name], "info_for", None)
    return info_for(**kwargs) if info_for else create_describer(name, **kwargs).info()


def load_plugins(plugins: List[str]) -> None:
    """Imports user modules (dotted names or .py paths) that register their own describers."""
    import importlib
    import importlib.util
    for plugin in plugins:
        if plugin.endswith(".py"):
            path = Path(plugin)
            if not path.exists():
                raise FileNotFoundError(f"describer plugin not found: {path}")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(plugin)
            except ImportError as e:
                raise ValueError(f"cannot import describer plugin {plugin!r}: {e}") from None


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

_COLOURS = [(0, "red"), (30, "orange"), (55, "yellow"), (105, "green"), (175, "teal"), (225, "blue"),
            (275, "purple"), (320, "pink"), (345, "red")]


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
    # np.gradient needs two samples along an axis: a 1-pixel-wide image has no change along it
    gy = np.gradient(grey, axis=0) if grey.shape[0] > 1 else np.zeros_like(grey)
    gx = np.gradient(grey, axis=1) if grey.shape[1] > 1 else np.zeros_like(grey)
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
        # version: bump when the wording changes (it is part of the cache key). 2: hue names re-centred
        # (pure blue was called purple); grey images, e.g. Fashion-MNIST, read as in version 1
        return {"backend": "template", "model": None, "prompt": None, "version": 2}

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


class TransformersDescriber:
    """A transformers VLM loaded with `AutoProcessor` + `AutoModelForImageTextToText` (hub id or local
    path), prompted with one of the paper's prompts or the user's, greedy batched generation.

    The prompt reaches the model either through `prompt_template` (a format string with `{prompt}`) or,
    when the template is None, through the processor's chat template (chat VLMs). Subclasses only set
    defaults; `describe --backend vlm --model ID` runs any image-text-to-text model on the hub.
    """
    backend = "vlm"
    default_model = "Qwen/Qwen2-VL-2B-Instruct"
    default_template: Optional[str] = None  # None: the processor's chat template

    def __init__(self, model: Optional[str] = None, prompt: str = "short", prompt_template: Optional[str] = None,
                 max_new_tokens: Optional[int] = None, device: Optional[str] = None, dtype: Optional[str] = None, **_):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        self.torch = torch
        info = self.info_for(model, prompt, prompt_template, max_new_tokens)
        self.model_name, self.prompt, self.max_new_tokens = info["model"], info["prompt"], info["max_new_tokens"]
        self.prompt_template = prompt_template or self.default_template
        self.device, self.dtype = pick_device_dtype(device, dtype)
        self.processor = AutoProcessor.from_pretrained(self.model_name)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # batched generation: every prompt must end at the same column
        if self.prompt_template is None and not getattr(self.processor, "chat_template", None):
            raise ValueError(f"{self.model_name}: the processor has no chat template; pass --prompt-template "
                             f"(e.g. 'USER: <image>\\n{{prompt}} ASSISTANT:')")
        self.model = AutoModelForImageTextToText.from_pretrained(self.model_name, dtype=self.dtype)
        self.model = self.model.to(self.device).eval()

    @classmethod
    def info_for(cls, model: Optional[str] = None, prompt: str = "short", prompt_template: Optional[str] = None,
                 max_new_tokens: Optional[int] = None, **_) -> Dict:
        """What info() will return, from the arguments alone: the Ray engine's driver checks the output's
        meta without loading the model (only the workers load it)."""
        return {"backend": cls.backend, "model": model or cls.default_model, "prompt": resolve_prompt(prompt),
                "prompt_template": prompt_template or cls.default_template or "chat",
                "max_new_tokens": max_new_tokens or (30 if prompt == "short" else 120)}

    def info(self) -> Dict:
        return self.info_for(self.model_name, self.prompt, self.prompt_template, self.max_new_tokens)

    def text_for(self, class_name: str) -> str:
        prompt = self.prompt.format(class_name=class_name)
        if self.prompt_template is not None:
            return self.prompt_template.format(prompt=prompt)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def describe(self, images: List[Image.Image], class_names: List[str]) -> List[str]:
        images = [upsample_for_captioning(im) for im in images]
        texts = [self.text_for(c) for c in class_names]
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        for k, v in inputs.items():  # image tensors follow the model's dtype; ids and masks stay integer
            if v.is_floating_point():
                inputs[k] = v.to(self.dtype)
        with self.torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt_len = inputs["input_ids"].shape[1]
        if out.shape[1] >= prompt_len and bool((out[:, :prompt_len] == inputs["input_ids"]).all()):
            out = out[:, prompt_len:]  # decoder-only LMs return the prompt before the answer
        return [" ".join(t.split()) for t in self.processor.batch_decode(out, skip_special_tokens=True)]


register_describer("vlm")(TransformersDescriber)


@register_describer("blip2")
class Blip2Describer(TransformersDescriber):
    """BLIP-2 (the paper's captioner for its short descriptions): a plain-text question/answer prompt."""
    backend = "blip2"
    default_model = "Salesforce/blip2-opt-2.7b"
    default_template = "Question: {prompt} Answer:"


@register_describer("instructblip")
class InstructBlipDescriber(TransformersDescriber):
    """InstructBLIP: BLIP-2's ViT-g + Q-Former with an instruction-tuned Vicuna. It is the closest
    transformers equivalent of MiniGPT-4 (same vision tower and Q-Former, Vicuna LLM)."""
    backend = "instructblip"
    default_model = "Salesforce/instructblip-vicuna-7b"
    default_template = "{prompt}"


@register_describer("llava")
class LlavaDescriber(TransformersDescriber):
    """LLaVA-1.5 (llava-hf conversions), prompted through the processor's chat template."""
    backend = "llava"
    default_model = "llava-hf/llava-1.5-7b-hf"


@register_describer("llava-next")
class LlavaNextDescriber(TransformersDescriber):
    """LLaVA-NeXT / LLaVA-1.6 (any-resolution tiling), prompted through the processor's chat template."""
    backend = "llava-next"
    default_model = "llava-hf/llava-v1.6-mistral-7b-hf"
