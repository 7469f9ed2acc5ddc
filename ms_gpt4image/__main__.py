"""python -m ms_gpt4image train|evaluate|export ..."""
import argparse
import json
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ms_gpt4image", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("train", "train with CE + lambda * alignment"),
                        ("evaluate", "top-1/top-5 of a checkpoint on the eval MindRecord"),
                        ("export", "export the deployable net (no projector) to MindIR + ckpt")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("-c", "--config", required=True)
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set align.lambda=0 (repeatable)")
        if name == "train":
            p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.ckpt")
        else:
            p.add_argument("--ckpt", required=True, help="training or deployable checkpoint")
        if name == "export":
            p.add_argument("--out", required=True, help="output prefix: writes OUT.mindir and OUT.ckpt")
    a = ap.parse_args(argv)

    from .config import ConfigError, load_config
    try:
        cfg = load_config(a.config, a.set)
        if cfg["data_dir"] is None:
            raise ConfigError("data_dir is not set (config key or --set data_dir=DIR)")
        if a.cmd == "train":
            from .train import train
            result = train(cfg, resume=a.resume)
        elif a.cmd == "evaluate":
            from .deploy import run_evaluate
            result = run_evaluate(cfg, a.ckpt)
        else:
            from .deploy import run_export
            result = run_export(cfg, a.ckpt, a.out)
    except (ConfigError, ValueError, KeyError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
