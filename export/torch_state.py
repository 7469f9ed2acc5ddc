"""`python -m export dump-torch`: a PyTorch checkpoint -> .npz of its state dict (name -> array).

The PyTorch half of `python -m ms_gpt4image convert`, which maps the names onto MindSpore and runs
in a process without torch. Accepts a bare state dict or a training checkpoint that holds one under
`state_dict`, `model`, `model_state` or `model_ema` (choose with --key); strips DistributedDataParallel's `module.`.
"""
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .io_utils import atomic_path

STATE_KEYS = ("state_dict", "model", "model_state", "model_ema")  # model_state: official Hiera


def load_state_dict(path, key: Optional[str] = None, unsafe_pickle: bool = False) -> Dict[str, np.ndarray]:
    import torch
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
    except Exception as e:  # weights_only refuses pickled Python objects (e.g. argparse.Namespace)
        raise ValueError(f"{path}: cannot load with weights_only=True ({str(e)[:200]}); if you trust the file, "
                         f"pass --unsafe-pickle") from None
    if isinstance(obj, dict) and not all(torch.is_tensor(v) for v in obj.values()):
        keys = [key] if key else [k for k in STATE_KEYS if k in obj]
        if not keys or keys[0] not in obj:
            raise KeyError(f"{path}: no state dict under {key or STATE_KEYS}; top-level keys: {sorted(obj)[:10]}")
        obj = obj[keys[0]]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    out = {}
    for name, value in obj.items():
        if not torch.is_tensor(value) or name.endswith("num_batches_tracked"):
            continue
        out[name[len("module."):] if name.startswith("module.") else name] = value.detach().float().cpu().numpy()
    return out


def dump(path, out, key: Optional[str] = None, unsafe_pickle: bool = False) -> Dict:
    state = load_state_dict(path, key, unsafe_pickle)
    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no .npz to the name
        np.savez(f, **state)
    return {"tensors": len(state), "out": str(out)}
