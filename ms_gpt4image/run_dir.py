"""Whether `train` may start in its output_dir. A new run (no `--resume`) into a folder that holds a run's
files (last.ckpt, best.ckpt, epoch_N.ckpt, log.jsonl, summary.json) would overwrite them as it goes, so it is
refused, before the data or the net is built and before config.yaml is rewritten, with one line: what the
folder holds (model, epochs done of how many), `--resume` to continue it, `--overwrite` to start again, or
another output_dir. With `--overwrite` rank 0 removes those files first and prints one line naming them.

Every rank calls `check_output_dir`; rank 0 decides and the others follow (`_from_rank0`: its verdict is
summed over the ranks as a vector, so every rank raises the same line). That is also the barrier that keeps
the check ahead of the writes: no rank returns from it before every rank has entered it, so rank 0 cannot
have written anything under output_dir when another rank looks.
"""
import json
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .distributed import World, all_reduce_sum
from .files import write_failures

# A run's checkpoints, and its log and summary: what a new run would overwrite or remove. config.yaml is
# not one of them: train writes it first, before the data and the net are built, so a folder holding only a
# config.yaml is a run that stopped before its first epoch (a bad data_dir, a failed compile, Ctrl-C). It
# has no weights or results to lose, and the same command run again after the fix must not be refused for
# it; the new run rewrites it.
CHECKPOINT = re.compile(r"(last|best|epoch_(\d+))\.ckpt")
RECORDS = ("log.jsonl", "summary.json")
MESSAGE_BYTES = 4096  # the longest refusal line passed from rank 0 to the others (UTF-8 bytes)


class OutputDirInUse(ValueError):
    """output_dir holds a run a new one would overwrite (the CLI prints the line and exits 2)."""


def run_files(out: Path) -> List[str]:
    """The names of the run files in `out`: last.ckpt, best.ckpt, epoch_N.ckpt (by N), log.jsonl,
    summary.json, as far as present. An unreadable folder counts as empty: writing config.yaml then fails
    with a line naming it."""
    try:
        names = [p.name for p in Path(out).iterdir() if p.is_file()]
    except OSError:
        return []

    def order(name):
        m = CHECKPOINT.fullmatch(name)
        if m:
            return (0, {"last": -2, "best": -1}.get(m.group(1), int(m.group(2) or 0)), name)
        return (1, RECORDS.index(name), name)
    return sorted((n for n in names if CHECKPOINT.fullmatch(n) or n in RECORDS), key=order)


def _read(path: Path, parse) -> Dict:
    try:
        value = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _checkpoint_record(path: Path) -> Tuple[Optional[int], Dict]:
    """(epoch, run signature) a training checkpoint holds; (None, {}) where it has none or cannot be read."""
    import mindspore as ms
    try:
        params = ms.load_checkpoint(str(path), choice_func=lambda name: name in ("epoch", "run"))
    except (OSError, ValueError, RuntimeError, TypeError):
        return None, {}
    epoch = int(params["epoch"].asnumpy()) if "epoch" in params else None
    run = params.get("run")
    try:
        run = json.loads(run) if isinstance(run, str) else {}
    except ValueError:
        run = {}
    return epoch, run if isinstance(run, dict) else {}


def _logged_epoch(path: Path) -> Optional[int]:
    """The last epoch log.jsonl records (lines that do not parse are skipped)."""
    epochs = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            epochs.append(int(json.loads(line)["epoch"]))
        except (ValueError, KeyError, TypeError):
            pass
    return max(epochs) if epochs else None


def describe_run(out: Path, names: List[str]) -> str:
    """What the run in `out` is, from its last.ckpt (epoch, run signature), summary.json and config.yaml:
    `a resnet18_cifar run, 2 of 2 epochs done (finished)`."""
    import yaml
    epoch, run = _checkpoint_record(out / "last.ckpt") if "last.ckpt" in names else (None, {})
    summary = _read(out / "summary.json", json.loads) if "summary.json" in names else {}
    config = _read(out / "config.yaml", yaml.safe_load)
    model = run.get("model") or summary.get("model") or config.get("model")
    total = run.get("epoch_size") or summary.get("epochs") or config.get("epoch_size")
    done = epoch if epoch is not None else _logged_epoch(out / "log.jsonl") if "log.jsonl" in names else None
    what = f"a {model} run" if model else "a run of an unknown model"
    if done is None:
        return f"{what}, epochs done unknown"
    state = ""
    if total:
        state = " (finished)" if done >= total and summary else " (unfinished)" if done < total else ""
    return f"{what}, {done}{f' of {total}' if total else ''} epoch{'s' if (total or done) != 1 else ''} done{state}"


def _from_rank0(message: Optional[str], world: World, reduce: Callable) -> Optional[str]:
    """Rank 0's message (None: go on) on every rank: its UTF-8 bytes in a float32 vector that the other
    ranks add zeros to (exact: every element is below 2**24), so every rank ends with rank 0's line even
    where it sees another folder (an output_dir local to each node)."""
    if not world.distributed:
        return message
    vec = np.zeros(MESSAGE_BYTES + 1, np.float32)
    if world.is_main and message is not None:
        data = message.encode("utf-8")[:MESSAGE_BYTES]
        vec[0] = 1
        vec[1:1 + len(data)] = np.frombuffer(data, np.uint8)
    total = np.asarray(reduce(vec, world))
    if round(float(total[0])) == 0:
        return None
    return bytes(np.rint(total[1:]).astype(np.uint8)).rstrip(b"\0").decode("utf-8", errors="ignore")


def check_output_dir(out: Path, resume=False, overwrite: bool = False, world: World = World(),
                     reduce: Callable = all_reduce_sum) -> Optional[List[str]]:
    """Called by every rank before anything is written. Without `resume` or `overwrite`, an output_dir
    holding a run's files (run_files) raises OutputDirInUse on every rank, as rank 0 found it. With
    `overwrite` rank 0 removes them and prints one line naming them; returns the names removed (rank 0).
    `resume` continues a run: nothing to check here (its checkpoint is checked when it loads)."""
    out = Path(out)
    if overwrite and resume:
        raise OutputDirInUse(f"--resume continues the run in {out} and --overwrite starts it again: give one of "
                             f"them (--resume CKPT with a fresh output_dir starts from another run's checkpoint)")
    if resume:
        return None
    names = run_files(out) if world.is_main else []
    if not overwrite:  # rank 0 decides, every rank raises its line
        refusal = None
        if names:
            refusal = (f"output_dir {out} holds {describe_run(out, names)}: {', '.join(names)}; continue it with "
                       f"--resume, start again with --overwrite (removes those files), or set another output_dir "
                       f"(--set output_dir=DIR)")
        refusal = _from_rank0(refusal, world, reduce)
        if refusal:
            raise OutputDirInUse(refusal)
        return None
    if not names:  # every rank knows `overwrite`: no verdict to pass; only rank 0 removes files
        return None
    what = describe_run(out, names)
    for i, name in enumerate(names):
        with write_failures(out / name, f"{', '.join(names[:i])} already removed" if i else "nothing was removed"):
            (out / name).unlink()
    rewritten = "; its config.yaml is rewritten" if (out / "config.yaml").exists() else ""
    print(f"--overwrite: removed {what} from {out}: {', '.join(names)}{rewritten}", flush=True)
    return names
