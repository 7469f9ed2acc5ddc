"""`python -m ms_gpt4image.report`: the demo's comparison of the baseline and GPT4Image arms.

Reads each arm's summary.json, log.jsonl and evaluation JSON; writes report.json, report.md and
a plot of eval top-1 per epoch (accuracy.png)."""
import argparse
import json
from pathlib import Path


def _load(path):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (did that stage run?)")
    return json.loads(path.read_text())


def build_report(demo_dir) -> dict:
    demo_dir = Path(demo_dir)
    arms = {}
    for arm in ("baseline", "gpt4image"):
        summary = _load(demo_dir / arm / "summary.json")
        ev = _load(demo_dir / arm / "eval.json")
        arms[arm] = {"lambda": summary["lambda"], "top1": ev["top1"], "top5": ev["top5"],
                     "eval_images": ev["count"], "best_epoch_top1": summary["best_top1"],
                     "wall_time_s": summary["wall_time_s"], "train_images_per_s": summary["train_images_per_s"],
                     "epochs": summary["epochs"], "train_images": summary["train_images"]}
    manifest = _load(demo_dir / "data" / "manifest.json")
    export = _load(demo_dir / "deploy" / "gpt4image.export.json")
    return {"dataset": manifest["dataset"], "describer": manifest["describer"], "embedding": manifest["embedding"],
            "arms": arms, "top1_gain": arms["gpt4image"]["top1"] - arms["baseline"]["top1"],
            "alignment_cost": arms["baseline"]["train_images_per_s"] / arms["gpt4image"]["train_images_per_s"],
            "export": export}


def to_markdown(r: dict) -> str:
    lines = [f"# GPT4Image demo: {r['dataset']}", "",
             f"descriptions: {r['describer']['backend']} ({r['describer']['model'] or 'no model'}), "
             f"text encoder: {r['embedding']['model']} ({r['embedding']['dim']}-d)", "",
             "| arm | lambda | top-1 (%) | top-5 (%) | best-epoch top-1 (%) | wall time (s) | train images/s |",
             "|---|---|---|---|---|---|---|"]
    for name, a in r["arms"].items():
        lines.append(f"| {name} | {a['lambda']} | {a['top1']:.2f} | {a['top5']:.2f} | {a['best_epoch_top1']:.2f} | "
                     f"{a['wall_time_s']:.0f} | {a['train_images_per_s']:.0f} |")
    a = r["arms"]["gpt4image"]
    lines += ["", f"GPT4Image - baseline, top-1: **{r['top1_gain']:+.2f}** points "
              f"({a['train_images']} train images, {a['eval_images']} eval images, {a['epochs']} epochs, final epoch).",
              f"Deployable MindIR: `{r['export']['mindir']}` (reloaded, max |logit diff| "
              f"{r['export']['max_abs_logit_diff']:.1e} on {r['export']['checked_images']} images)."]
    return "\n".join(lines) + "\n"


def plot(demo_dir, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arm in ("baseline", "gpt4image"):
        log = [json.loads(l) for l in (Path(demo_dir) / arm / "log.jsonl").read_text().splitlines()]
        pts = [(r["epoch"], r["top1"]) for r in log if "top1" in r]
        ax.plot(*zip(*pts), marker="o", label=arm)
    ax.set_xlabel("epoch")
    ax.set_ylabel("eval top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("demo_dir")
    a = ap.parse_args(argv)
    r = build_report(a.demo_dir)
    Path(a.demo_dir, "report.json").write_text(json.dumps(r, indent=2) + "\n")
    md = to_markdown(r)
    Path(a.demo_dir, "report.md").write_text(md)
    plot(a.demo_dir, Path(a.demo_dir, "accuracy.png"))
    print(md)


if __name__ == "__main__":
    main()
