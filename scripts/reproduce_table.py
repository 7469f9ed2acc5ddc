"""The reproduction table of scripts/reproduce.sh: our per-model results next to the paper's.

Usage: python scripts/reproduce_table.py --dataset cifar10|cifar100|imagenet --dir WORK/<ds> --models m1,m2 [--note TEXT]
For each model it reads WORK/<ds>/train/<model>/report.json (written by `python -m ms_gpt4image.report`:
mean +- std of each arm over the seeds and the paired difference with its 95% interval) and, when present,
WORK/<ds>/data/manifest.json (which describer and text encoder made the training signal). Writes
WORK/<ds>/table.md (temporary name, then renamed) and prints it. Only reads JSON: no torch, no MindSpore.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ms_gpt4image.stats import fmt, fmt_difference  # noqa: E402  (NumPy/SciPy only)

# Paper (arXiv 2306.00693) top-1 (%), baseline -> GPT4Image: Table 2 (CIFAR, ResNet-18) and Table 1 (ImageNet-1K).
PAPER = {
    "cifar10": {"resnet18": (95.5, 95.7)},
    "cifar100": {"resnet18": (75.4, 75.8)},
    "imagenet": {"resnet50": (76.3, 76.7), "convnext_tiny": (82.1, 82.4), "convnext_small": (83.1, 83.4),
                 "convnext_base": (83.8, 84.0), "deit_small": (79.8, 80.1), "deit_base": (81.8, 82.3)},
}
NAMES = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "convnext_tiny": "ConvNeXt-T",
         "convnext_small": "ConvNeXt-S", "convnext_base": "ConvNeXt-B", "deit_small": "DeiT-S", "deit_base": "DeiT-B"}
TITLES = {"cifar10": "CIFAR-10 (paper Table 2)", "cifar100": "CIFAR-100 (paper Table 2)",
          "imagenet": "ImageNet-1K (paper Table 1)"}


def build_table(dataset: str, ds_dir: Path, models, note: str = "") -> str:
    rows, seeds, details = [], None, None
    for m in models:
        path = ds_dir / "train" / m / "report.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (run the report stage after training {m})")
        r = json.loads(path.read_text())
        base, ours, d = r["arms"]["baseline"]["top1"], r["arms"]["gpt4image"]["top1"], r["top1_difference"]
        pb, pg = PAPER[dataset][m]
        rows.append(f"| {NAMES.get(m, m)} | {fmt(base)} | {fmt(ours)} | {fmt_difference(d)} | {d['verdict']} | "
                    f"{pb:.1f} | {pg:.1f} | {pg - pb:+.1f} |")
        seeds = seeds or [str(s) for s in r.get("seeds", r["per_seed"])]
        if details is None:
            any_run = next(iter(r["per_seed"].values()))["gpt4image"]
            details = (f"{any_run['train_images']} train images, {any_run['eval_images']} eval images, "
                       f"{any_run['epochs']} epochs, top-1 of the final epoch"
                       + {"ema": " (EMA weights)", "max": " (the better of the raw and EMA weights)"}.get(
                           any_run.get("reported"), ""))
    lines = [f"# GPT4Image reproduction: {TITLES[dataset]}", ""]
    if note:
        lines += [f"**{note}**", ""]
    manifest = ds_dir / "data" / "manifest.json"
    if manifest.exists():  # absent on a report host that only received train/
        m = json.loads(manifest.read_text())
        desc, emb = m.get("describer") or {}, m.get("embedding") or {}
        prompt = repr(desc["prompt"]) if desc.get("prompt") else "not recorded"
        lines += [f"Descriptions: {desc.get('backend')} ({desc.get('model')}), prompt {prompt}; "
                  f"text encoder: {emb.get('model')} ({emb.get('dim')}-d).", ""]
    lines += [f"Ours: mean +- std over {len(seeds)} seed(s) ({', '.join(seeds)}); {details}. The difference is "
              f"GPT4Image - baseline paired by seed (same seed = same initial weights and data order), with its "
              f"95% Student-t interval. Paper: one run per arm.", "",
              "| model | ours: baseline | ours: GPT4Image | ours: GPT4Image - baseline | verdict | "
              "paper: baseline | paper: GPT4Image | paper: gain |",
              "|---|---|---|---|---|---|---|---|", *rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=sorted(PAPER))
    ap.add_argument("--dir", required=True, help="WORK/<dataset>: holds train/<model>/report.json")
    ap.add_argument("--models", required=True, help="comma-separated, in table order")
    ap.add_argument("--note", default="", help="a line printed in bold above the table (e.g. for the dry run)")
    a = ap.parse_args(argv)
    models = [m for m in a.models.split(",") if m]
    unknown = [m for m in models if m not in PAPER[a.dataset]]
    if unknown:
        print(f"error: no paper row for {unknown} on {a.dataset} (known: {sorted(PAPER[a.dataset])})", file=sys.stderr)
        return 2
    ds_dir = Path(a.dir)
    try:
        table = build_table(a.dataset, ds_dir, models, a.note)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tmp = ds_dir / ".table.md.partial"
    tmp.write_text(table)
    tmp.replace(ds_dir / "table.md")
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
