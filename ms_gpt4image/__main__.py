"""python -m ms_gpt4image train|evaluate|export|convert|predict|doctor|recipes ..."""
import argparse
import json
import sys
from pathlib import Path

from .cli import command_line, interrupted, positive_int, sigterm_interrupts


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ms_gpt4image", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("train", "train with CE + lambda * alignment"),
                        ("evaluate", "top-1/top-5 of a checkpoint on the eval MindRecord"),
                        ("export", "export the deployable net (no projector) to MindIR + ckpt")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("-c", "--config", required=True, help="a YAML file or a shipped recipe's name")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set align.lambda=0 (repeatable)")
        if name == "train":
            p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                           help="continue from OUTPUT_DIR/last.ckpt, or from the given training checkpoint")
            p.add_argument("--overwrite", action="store_true",
                           help="start again in an OUTPUT_DIR that holds another run: its checkpoints, log.jsonl and "
                                "summary.json are removed first (without it such a run is refused)")
        else:
            p.add_argument("--ckpt", required=True, help="training or deployable checkpoint")
            p.add_argument("--weights", default="auto", choices=["auto", "ema", "raw"],
                           help="auto: as the config's report_top1 says: raw; ema: the EMA weights when the "
                                "training checkpoint has them; max: evaluate both and report the better, export EMA")
        if name == "export":
            p.add_argument("--out", required=True, help="output prefix: writes OUT.mindir and OUT.ckpt")
    p = sub.add_parser("convert", help="PyTorch checkpoint (torchvision, timm, ConvNeXt, the authors') -> MindSpore")
    p.add_argument("--src", required=True, help=".pth / .pth.tar")
    p.add_argument("--format", required=True,
                   help="torchvision-resnet | timm-deit | convnext | gpt4image-resnet | gpt4image-deit | hiera | hiera-hf")
    p.add_argument("--model", required=True,
                   help="our backbone name, e.g. resnet50, deit_base, convnext_tiny, hiera_base_224")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="input size the position embeddings are for (default: config.json's for hiera-hf, else 224)")
    p.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help='architecture overrides, as the config\'s model_kwargs, e.g. \'{"drop_path_rate": 0.1}\'')
    p.add_argument("--key", default=None, help="state_dict | model | model_ema (default: the first present)")
    p.add_argument("--unsafe-pickle", action="store_true", help="allow pickled objects (trusted files only)")
    p.add_argument("--out", required=True, help="output .ckpt")
    p = sub.add_parser("predict", help="top-k classes of images with the deployed model (MindIR or checkpoint)")
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders (recursive, image extensions only)")
    p.add_argument("--model", required=True,
                   help="OUT.mindir or OUT.ckpt from export (OUT.model.json beside it), or any checkpoint with -c")
    p.add_argument("-c", "--config", default=None,
                   help="training config: needed for a training checkpoint or a model without OUT.model.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--data-dir", default=None, help="predict the eval split of a packed directory (with its labels)")
    p.add_argument("--topk", type=positive_int, default=5)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--out", default=None, help="also write the predictions to preds.jsonl or preds.csv")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip images that cannot be decoded and list them (OUT.skipped.jsonl); default: stop")
    p.add_argument("--weights", default="auto", choices=["auto", "ema", "raw"], help="for a training checkpoint")
    p.add_argument("--device", default="CPU", help="CPU | GPU | Ascend")
    p = sub.add_parser("doctor", help="check this environment: Python, MindSpore/CANN pair, devices, msrun")
    p.add_argument("--device", default=None, help="also run MindSpore's run_check on this target (Ascend | GPU | CPU)")
    p.add_argument("--no-run-check", action="store_true", help="skip MindSpore's run_check (versions only)")
    sub.add_parser("recipes", help="list the shipped recipes (give one by name: -c imagenet_resnet50)")
    a = ap.parse_args(argv)

    if a.cmd == "doctor":
        from .doctor import main as doctor
        return doctor(a.device, not a.no_run_check)
    if a.cmd == "recipes":
        from .config import find_config, list_recipes
        for name in list_recipes():
            print(f"{name:<40} {find_config(name)}")
        return 0
    from .config import ConfigError, load_config
    from .files import WriteFailed
    if a.cmd == "predict":
        return _predict(a)
    if a.cmd == "convert":
        from .convert import run_convert
        try:
            kwargs = json.loads(a.model_kwargs) if a.model_kwargs else None
            if kwargs is not None and not isinstance(kwargs, dict):
                raise ValueError(f"--model-kwargs must be a JSON object, got {a.model_kwargs!r}")
            result = run_convert(a.src, a.format, a.model, a.out, a.image_size, a.key, a.unsafe_pickle, kwargs)
        except (ValueError, KeyError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(result, indent=2))
        return 0
    cfg = None
    try:
        cfg = load_config(a.config, a.set)
        if cfg["data_dir"] is None:
            raise ConfigError("data_dir is not set (config key or --set data_dir=DIR)")
        sigterm_interrupts()
        if a.cmd == "train":
            from .train import train
            result = train(cfg, resume=a.resume, overwrite=a.overwrite)
        elif a.cmd == "evaluate":
            from .deploy import run_evaluate
            result = run_evaluate(cfg, a.ckpt, a.weights)
        else:
            from .deploy import run_export
            result = run_export(cfg, a.ckpt, a.out, weights=a.weights)
    except (ConfigError, ValueError, KeyError, FileNotFoundError, FloatingPointError, WriteFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if a.cmd == "train" and cfg is not None:
            return interrupted(_train_kept(Path(cfg["output_dir"]), cfg["epoch_size"], argv))
        if a.cmd == "export":
            return interrupted(f"the export to {a.out} did not finish (its files may be incomplete); run it again: "
                               f"{command_line('python -m ms_gpt4image', argv)}")
        return interrupted("nothing written")
    print(json.dumps(result, indent=2))
    return 0


def _without_resume(argv):
    """argv without its --resume [CKPT] / --resume=CKPT, and without --overwrite (which --resume refuses)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--resume":
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("-")
        elif not arg.startswith("--resume=") and arg != "--overwrite":
            out.append(arg)
    return out


def _train_kept(out: Path, epochs: int, argv) -> str:
    """What an interrupted `train` kept, and the command that continues it."""
    from .checkpoint import saved_epoch
    argv = list(sys.argv[1:] if argv is None else argv)
    epoch = saved_epoch(out / "last.ckpt") if (out / "last.ckpt").exists() else None
    if epoch is None:
        return f"no epoch was saved under {out}; start again with: {command_line('python -m ms_gpt4image', argv)}"
    return (f"{out / 'last.ckpt'} holds epoch {epoch} of {epochs}; continue with: "
            f"{command_line('python -m ms_gpt4image', _without_resume(argv), add=['--resume'])}")


def _predict(a) -> int:
    """The table goes to stdout as it is produced; the summary (JSON) to stderr."""
    from .config import ConfigError, load_config
    import mindspore as ms
    from .compat import set_device
    from .predict import load_model, output_format, run_predict
    try:
        cfg = load_config(a.config, a.set) if a.config else None
        if cfg is not None and cfg["data_dir"] is None:
            raise ConfigError("data_dir is not set: the config's manifest gives the class names")
        if a.out:
            output_format(a.out)  # before the model loads
        ms.set_context(mode=ms.GRAPH_MODE)
        set_device(a.device)
        net, spec = load_model(a.model, cfg, a.weights)
        sigterm_interrupts()  # the temporary output is then removed
        result = run_predict(net, spec, a.paths, a.data_dir, a.topk, a.batch_size, a.out, a.skip_bad)
    except (ConfigError, ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupted("nothing written" + (f" under {a.out}" if a.out else ""))
    print(json.dumps(result, indent=2, ensure_ascii=False), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
