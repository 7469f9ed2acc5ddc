"""`python -m ms_gpt4image.report RUN_DIR`: baseline against GPT4Image over every seed trained.

RUN_DIR holds one folder per seed, `seed_S/{baseline,gpt4image}/` (summary.json, log.jsonl and the
final evaluation, eval.json), as `scripts/demo.sh --seeds N` and `scripts/reproduce.sh` write them.
Writes RUN_DIR/report.json, report.md (per-seed figures, mean +- std of each arm, the paired difference
with its 95% confidence interval and a verdict in words) and accuracy.png (every seed's eval curve).
"""
import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Dict

from .files import atomic_path
from .stats import fmt, fmt_difference, mean_std, paired_difference

ARMS = ("baseline", "gpt4image")

# what each field the report reads must hold; a file that breaks this is named with the key
KINDS = {"a number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
         "a number or null": lambda v: v is None or KINDS["a number"](v),
         "a string": lambda v: isinstance(v, str),
         "a string or null": lambda v: v is None or isinstance(v, str),
         "an object": lambda v: isinstance(v, dict)}
# train_images_per_s is null when a run resumed after its last epoch trained nothing (shown as nan)
SUMMARY = {"lambda": "a number", "best_top1": "a number", "wall_time_s": "a number",
           "train_images_per_s": "a number or null", "epochs": "a number", "train_images": "a number"}
EVAL = {"top1": "a number", "top5": "a number", "count": "a number"}
LOG_EVAL = {"epoch": "a number", "top1": "a number"}  # a log line with top1 is an evaluated epoch
LOG_EVAL_EMA = {"top1_ema": "a number"}  # ... and top1_ema when the run keeps an EMA
# summary.json `reported` (config report_top1) -> what the reported top-1 is
WHICH_TOP1 = {"raw": "top-1 of the raw weights", "ema": "top-1 of the EMA weights",
              "max": "top-1 of the better of the raw and EMA weights"}
MANIFEST = {"dataset": "a string", "describer": "an object", "describer.backend": "a string",
            "describer.model": "a string or null", "embedding": "an object", "embedding.model": "a string or null",
            "embedding.dim": "a number"}
EXPORT = {"mindir": "a string", "max_abs_logit_diff": "a number", "checked_images": "a number"}


def _read(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (did that stage run?)")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def _parse(text: str, where: str, fields: Dict[str, str]) -> Dict:
    """One JSON object, `fields` checked; errors start with `where` (the file, and line)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    return _check(data, where, fields)


def _check(data: Dict, where: str, fields: Dict[str, str]) -> Dict:
    """fields: {dotted key: kind}; a missing key or a value of another kind is an error naming both."""
    for key, kind in fields.items():
        value = data
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ValueError(f"{where}: no {key!r}")
            value = value[part]
        if not KINDS[kind](value):
            raise ValueError(f"{where}: {key!r} is {json.dumps(value)}, not {kind}")
    return data


def _load(path: Path, fields: Dict[str, str]) -> Dict:
    return _parse(_read(path), str(path), fields)


def _curve(path: Path, reported: str = "raw"):
    """[[epoch, top1]] of every evaluated epoch (line with top1) of log.jsonl: the top-1 the run
    reports (summary.json `reported`: raw -> top1, ema -> top1_ema, max -> the larger)."""
    curve = []
    for n, line in enumerate(_read(path).splitlines(), 1):
        where = f"{path}:{n}"
        r = _parse(line, where, {}) if line.strip() else {}
        if "top1" in r:
            _check(r, where, LOG_EVAL)
            if reported in ("ema", "max"):
                _check(r, where, LOG_EVAL_EMA)
            ema = r.get("top1_ema")
            curve.append([r["epoch"], ema if reported == "ema" else max(r["top1"], ema) if reported == "max"
                          else r["top1"]])
    if not curve:
        raise ValueError(f"{path}: no evaluated epoch (no line has 'top1')")
    return curve


def seed_dirs(run_dir) -> Dict[int, Path]:
    """{seed: folder} for every seed_S folder of RUN_DIR, in seed order."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"{run_dir}: no such folder")
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: not a folder (give the run folder that holds seed_S/)")
    found = {int(m.group(1)): p for p in run_dir.glob("seed_*") if (m := re.fullmatch(r"seed_(\d+)", p.name))}
    if not found:
        raise FileNotFoundError(f"{run_dir}: no seed_S/ folders (train with scripts/demo.sh or reproduce.sh first)")
    return dict(sorted(found.items()))


def arm_result(arm_dir: Path) -> Dict:
    if not arm_dir.is_dir():
        raise FileNotFoundError(f"{arm_dir}: missing (did that arm train?)")
    summary, ev = _load(arm_dir / "summary.json", SUMMARY), _load(arm_dir / "eval.json", EVAL)
    return {"lambda": summary["lambda"], "top1": ev["top1"], "top5": ev["top5"], "eval_images": ev["count"],
            "best_epoch_top1": summary["best_top1"], "wall_time_s": summary["wall_time_s"],
            "train_images_per_s": summary["train_images_per_s"], "epochs": summary["epochs"],
            "train_images": summary["train_images"], "reported": summary.get("reported") or "raw",
            "curve": _curve(arm_dir / "log.jsonl", summary.get("reported") or "raw")}


def build_report(run_dir, only_seeds=None) -> Dict:
    run_dir = Path(run_dir)
    found = seed_dirs(run_dir)
    if only_seeds is not None:
        missing = [s for s in only_seeds if s not in found]
        if missing:
            raise FileNotFoundError(f"{run_dir}: no seed_S/ folder for seed(s) {missing}")
        found = {s: found[s] for s in only_seeds}
    seeds = {s: {arm: arm_result(d / arm) for arm in ARMS} for s, d in found.items()}
    top1 = {arm: [seeds[s][arm]["top1"] for s in seeds] for arm in ARMS}
    report = {"seeds": list(seeds), "per_seed": seeds,
              "arms": {arm: {"top1": mean_std(top1[arm]),
                             "top5": mean_std([seeds[s][arm]["top5"] for s in seeds]),
                             "wall_time_s": mean_std([seeds[s][arm]["wall_time_s"] for s in seeds]),
                             "train_images_per_s": mean_std([seeds[s][arm]["train_images_per_s"] for s in seeds])}
                       for arm in ARMS},
              "top1_difference": paired_difference(top1["baseline"], top1["gpt4image"])}
    manifest = run_dir / "data" / "manifest.json"
    if manifest.exists():  # the demo packs its data inside RUN_DIR
        m = _load(manifest, MANIFEST)
        report.update(dataset=m["dataset"], describer=m["describer"], embedding=m["embedding"])
    export = run_dir / "deploy" / "gpt4image.export.json"
    if export.exists():
        report["export"] = _load(export, EXPORT)
    return report


def to_markdown(r: Dict, title: str = "GPT4Image against the baseline") -> str:
    lines = [f"# {title}" + (f": {r['dataset']}" if "dataset" in r else ""), ""]
    if "describer" in r:
        lines += [f"descriptions: {r['describer']['backend']} ({r['describer']['model'] or 'no model'}), "
                  f"text encoder: {r['embedding']['model']} ({r['embedding']['dim']}-d)", ""]
    lines += ["| seed | baseline top-1 (%) | GPT4Image top-1 (%) | difference | baseline / GPT4Image wall time (s) |",
              "|---|---|---|---|---|"]
    for s, arms in r["per_seed"].items():
        b, g = arms["baseline"], arms["gpt4image"]
        lines.append(f"| {s} | {b['top1']:.2f} | {g['top1']:.2f} | {g['top1'] - b['top1']:+.2f} | "
                     f"{b['wall_time_s']:.0f} / {g['wall_time_s']:.0f} |")
    d = r["top1_difference"]
    lines.append(f"| mean +- std | {fmt(r['arms']['baseline']['top1'])} | {fmt(r['arms']['gpt4image']['top1'])} | "
                 f"{fmt_difference(d)} | |")
    any_seed = next(iter(r["per_seed"].values()))["gpt4image"]
    lines += ["", f"GPT4Image - baseline, top-1, paired by seed over {d['n']} seed(s): **{fmt_difference(d)}** "
              f"points: {d['verdict']}.",
              f"({any_seed['train_images']} train images, {any_seed['eval_images']} eval images, "
              f"{any_seed['epochs']} epochs, final epoch, {WHICH_TOP1[any_seed['reported']]}; train images/s: baseline "
              f"{fmt(r['arms']['baseline']['train_images_per_s'], 0)}, GPT4Image "
              f"{fmt(r['arms']['gpt4image']['train_images_per_s'], 0)}.)"]
    if "export" in r:
        e = r["export"]
        lines.append(f"Deployable MindIR: `{e['mindir']}` (reloaded, max |logit diff| {e['max_abs_logit_diff']:.1e} "
                     f"on {e['checked_images']} images).")
    return "\n".join(lines) + "\n"


def plot(r: Dict, path) -> None:
    """Eval top-1 per epoch: a thin line per seed, a thick line for the mean, one colour per arm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for arm, colour in zip(ARMS, ("tab:blue", "tab:orange")):
        curves = [np.asarray(r["per_seed"][s][arm]["curve"]) for s in r["per_seed"]]
        for s, c in zip(r["per_seed"], curves):
            ax.plot(c[:, 0], c[:, 1], color=colour, alpha=0.45, lw=1, marker=".")
        epochs = sorted(set.intersection(*(set(c[:, 0].tolist()) for c in curves)))
        mean = [np.mean([c[c[:, 0] == e, 1][0] for c in curves]) for e in epochs]
        ax.plot(epochs, mean, color=colour, lw=2.5, label=f"{arm} (mean of {len(curves)} seeds)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("eval top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)  # the temporary name has no .png
    plt.close(fig)


def write_report(run_dir, title: str = "GPT4Image against the baseline", only_seeds=None) -> Dict:
    """report.json, report.md and accuracy.png in RUN_DIR, each written whole (temporary name, rename);
    a file that cannot be written is an error naming it and the reason."""
    run_dir = Path(run_dir)
    r = build_report(run_dir, only_seeds)
    md = to_markdown(r, title)
    for name, write in (("report.json", lambda p: p.write_text(json.dumps(r, indent=2) + "\n")),
                        ("report.md", lambda p: p.write_text(md)),
                        ("accuracy.png", lambda p: plot(r, p))):
        path = run_dir / name
        try:
            with atomic_path(path) as tmp:
                write(tmp)
        except OSError as e:
            raise ValueError(f"{path}: cannot write ({e.strerror or e})") from None
    r["markdown"] = md
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ms_gpt4image.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--title", default="GPT4Image against the baseline")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds to report (default: every seed_S folder)")
    a = ap.parse_args(argv)
    try:
        if a.seeds and not all(s.strip().isdigit() for s in a.seeds.split(",")):
            raise ValueError(f"--seeds must be comma-separated integers, got {a.seeds!r}")
        seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else None
        r = write_report(a.run_dir, a.title, seeds)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(r["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
