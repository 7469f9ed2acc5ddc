"""Is a gain larger than seed noise? Paired statistics of two arms trained with the same seeds."""
from typing import Dict, Sequence

import numpy as np
from scipy import stats


def mean_std(values: Sequence[float]) -> Dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None, "n": len(v)}


def paired_difference(baseline: Sequence[float], treated: Sequence[float], confidence: float = 0.95) -> Dict:
    """treated - baseline, seed by seed (same seed = same initial weights and data order): mean, sample
    std, Student-t confidence interval of the mean, and a verdict in words."""
    if len(baseline) != len(treated):
        raise ValueError(f"{len(baseline)} baseline runs but {len(treated)} GPT4Image runs: pair them by seed")
    d = np.asarray(treated, np.float64) - np.asarray(baseline, np.float64)
    out = {**mean_std(d), "per_seed": d.tolist(), "confidence": confidence, "ci": None}
    if len(d) < 2:
        out["verdict"] = "one seed: no spread, so this difference cannot be told from seed noise"
        return out
    half = stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * out["std"] / np.sqrt(len(d))
    lo, hi = out["mean"] - half, out["mean"] + half
    out["ci"] = [float(lo), float(hi)]
    pct = f"{100 * confidence:.0f}%"
    if lo > 0:
        out["verdict"] = f"GPT4Image is ahead beyond seed noise (the {pct} interval excludes 0)"
    elif hi < 0:
        out["verdict"] = f"GPT4Image is behind beyond seed noise (the {pct} interval excludes 0)"
    else:
        out["verdict"] = f"within seed noise (the {pct} interval includes 0)"
    return out


def fmt(ms: Dict, digits: int = 2) -> str:
    """'77.40 +- 1.12' (or just the mean for one run)."""
    return f"{ms['mean']:.{digits}f}" + (f" +- {ms['std']:.{digits}f}" if ms.get("std") is not None else "")


def fmt_difference(d: Dict) -> str:
    s = f"{d['mean']:+.2f}"
    if d["std"] is not None:
        s += f" +- {d['std']:.2f}, {100 * d['confidence']:.0f}% CI {d['ci'][0]:+.2f} .. {d['ci'][1]:+.2f}"
    return s
