"""python -m ms_gpt4image train|evaluate|export|convert ..."""
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
            p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                           help="continue from OUTPUT_DIR/last.ckpt, or from the given training checkpoint")
        else:
            p.add_argument("--ckpt", required=True, help="training or deployable checkpoint")
            p.add_argument("--weights", default="auto", choices=["auto", "ema", "raw"],
                           help="auto: the EMA weights when the training checkpoint has them")
        if name == "export":
            p.add_argument("--out", required=True, help="output prefix: writes OUT.mindir and OUT.ckpt")
    p = sub.add_parser("convert", help="PyTorch checkpoint (torchvision, timm, ConvNeXt, the authors') -> MindSpore")
    p.add_argument("--src", required=True, help=".pth / .pth.tar")
    p.add_argument("--format", required=True,
                   help="torchvision-resnet | timm-deit | convnext | gpt4image-resnet | gpt4image-deit")
    p.add_argument("--model", required=True, help="our backbone name, e.g. resnet50, deit_base, convnext_tiny")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--key", default=None, help="state_dict | model | model_ema (default: the first present)")
    p.add_argument("--unsafe-pickle", action="store_true", help="allow pickled objects (trusted files only)")
    p.add_argument("--out", required=True, help="output .ckpt")
    a = ap.parse_args(argv)

    from .config import ConfigError, load_config
    if a.cmd == "convert":
        from .convert import run_convert
        try:
            result = run_convert(a.src, a.format, a.model, a.out, a.image_size, a.key, a.unsafe_pickle)
        except (ValueError, KeyError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(result, indent=2))
        return 0
    try:
        cfg = load_config(a.config, a.set)
        if cfg["data_dir"] is None:
            raise ConfigError("data_dir is not set (config key or --set data_dir=DIR)")
        if a.cmd == "train":
            from .train import train
            result = train(cfg, resume=a.resume)
        elif a.cmd == "evaluate":
            from .deploy import run_evaluate
            result = run_evaluate(cfg, a.ckpt, a.weights)
        else:
            from .deploy import run_export
            result = run_export(cfg, a.ckpt, a.out, weights=a.weights)
    except (ConfigError, ValueError, KeyError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
