"""PyTorch side of the loss-parity test: the same formulas, written the way the authors' code does
(F.normalize, logits / tau, F.cross_entropy), with W as a bias-free nn.Linear.
Usage: python tests/torch_losses.py IN.npz OUT.npz"""
import sys

import numpy as np
import torch
import torch.nn.functional as F


def losses(z, t, tau):
    z = F.normalize(z, dim=-1)
    logits = z @ t.T / tau
    target = torch.arange(len(z))
    infonce = F.cross_entropy(logits, target)
    clip = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    cosine = (2 - 2 * (z * t).sum(-1)).mean()
    return {"infonce": infonce, "clip": clip, "cosine": cosine}


def main(inp, out):
    d = np.load(inp)
    f = torch.tensor(d["f"], dtype=torch.float64)
    t = torch.tensor(d["t"], dtype=torch.float64)
    result = {}
    for kind in ("infonce", "clip", "cosine"):
        proj = torch.nn.Linear(f.shape[1], t.shape[1], bias=False).double()
        with torch.no_grad():
            proj.weight.copy_(torch.tensor(d["w"], dtype=torch.float64))
        value = losses(proj(f), t, float(d["tau"]))[kind]
        value.backward()
        result[kind] = value.item()
        result[f"grad_{kind}"] = proj.weight.grad.numpy()
    np.savez(out, **result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
