#!/usr/bin/env python
"""`make test-compat`: the Python x MindSpore compatibility matrix.

For each combination: a fresh venv under .compat/py<X.Y>-ms<V>/ made with pyenv's Python, `pip install
mindspore==V <a snapshot of this checkout>` (non-editable, so the package's declared dependency ranges are
what pip resolves), then a smoke of the real command lines, run from a temporary directory outside the
checkout with no PYTHONPATH, through the installed console scripts:

  doctor      gpt4image doctor --no-run-check; gpt4image doctor          (both must exit 0)
  train       gpt4image train -c demo_fmnist ... (2 epochs, stop_at_epoch=1)
  resume      gpt4image train ... --resume                                (finishes epoch 2)
  evaluate    gpt4image evaluate ... --ckpt last.ckpt
  export      gpt4image export ... --out deploy/net                       (reloads the MindIR itself)
  predict     gpt4image predict *.png --model deploy/net.mindir
  msrun       msrun --worker_num=2 ... <launcher> train ... (1 epoch, data parallel on loopback)

The tiny packed data (synthetic Fashion-MNIST-shaped idx files -> export describe/embed/pack) is made once
per run with the checkout's .venv (MindSpore 2.7.2): every other version reads MindRecord written by 2.7.2.
Every combination runs the same smoke (a width-8 ResNet-18 on 80 images); `--smoke small` (simple_cnn width 4
on 32 images) or `--smoke auto` (small for MindSpore 2.9/2.10 only, whose CPU convolutions are ~100x slower on
larger tensors) cut it down where a combination is too slow.

Results go to ms_gpt4image/tested_matrix.json (read by `gpt4image doctor`), written after every combination,
and to the table between <!-- matrix --> and <!-- /matrix --> in docs/compatibility.md. A combination already
recorded as passed with the same versions is skipped unless --force.

  python scripts/test_compat.py                       # the default matrix
  python scripts/test_compat.py --only 3.11:2.7.2     # one combination (repeatable, or comma-separated)
  python scripts/test_compat.py --only 3.11:mindspore-dev==2.6.0.dev20250323
  python scripts/test_compat.py --table-only          # rewrite docs/compatibility.md from the JSON
"""
import argparse
import datetime
import glob
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
MATRIX_JSON = ROOT / "ms_gpt4image" / "tested_matrix.json"
DOC = ROOT / "docs" / "compatibility.md"
COMPAT_DIR = ROOT / ".compat"
MAIN_PY = ROOT / ".venv" / "bin" / "python"
NOTE = "written by scripts/test_compat.py (make test-compat); read by `python -m ms_gpt4image doctor`"
OPEN, CLOSE = "<!-- matrix -->", "<!-- /matrix -->"

DEV = "mindspore-dev==2.6.0.dev20250323"  # a pre-release of 2.6 on PyPI (wheels for cp39-cp311)
DEFAULT_MATRIX = (["3.11:" + v for v in ("2.7.0", "2.7.1", "2.7.2", "2.8.0", "2.9.0", "2.10.0")]
                  + ["3.9:2.7.2", "3.10:2.8.0", "3.12:2.7.2", "3.12:2.10.0", "3.11:" + DEV])
# versions inside the declared range that PyPI has no release wheel of for Python 3.9-3.12
UNTESTED = ("2.3", "2.4", "2.5", "2.6")
UNTESTED_TEXT = "untested here (no wheel on PyPI; covered by the API floor check in tests/test_compat.py)"
SLOW_ON_CPU = ("2.9", "2.10")  # the smaller smoke (ms_gpt4image/compat.py SLOW_ON_CPU)
STEPS = ("doctor", "train", "resume", "evaluate", "export", "predict", "msrun")

# the smoke's size: model, width, data set, batch
SMOKES = {
    "full": dict(model="resnet18_cifar", width=8, data="full", batch=16),
    "small": dict(model="simple_cnn", width=4, data="small", batch=8),
}
DATASETS = {"full": dict(train=80, eval=40), "small": dict(train=32, eval=16)}  # images per split


@dataclass(frozen=True)
class Combo:
    python: str       # "3.11"
    package: str      # "mindspore" or "mindspore-dev"
    version: str      # "2.7.2", "2.6.0.dev20250323"
    size: str = "auto"  # the smoke's size: auto | full | small

    @classmethod
    def parse(cls, text: str) -> "Combo":
        """'3.11:2.7.2' or '3.11:mindspore-dev==2.6.0.dev20250323'."""
        m = re.fullmatch(r"(3\.\d+):(?:([A-Za-z0-9_.-]+)==)?([0-9][0-9A-Za-z.+-]*)", text.strip())
        if not m:
            raise argparse.ArgumentTypeError(f"{text!r}: expected PY:VERSION (3.11:2.7.2) or PY:PACKAGE==VERSION")
        return cls(m.group(1), m.group(2) or "mindspore", m.group(3))

    @property
    def label(self) -> str:
        return f"py{self.python}-ms{self.version}"

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def prerelease(self) -> bool:
        return self.package != "mindspore" or bool(re.search(r"[A-Za-z]", self.version))

    @property
    def smoke(self) -> str:
        if self.size != "auto":
            return self.size
        return "small" if self.version.startswith(tuple(v + "." for v in SLOW_ON_CPU)) else "full"


def version_key(v: str) -> Tuple:
    nums = []
    for p in re.split(r"[.+-]", v):
        m = re.match(r"\d+", p)
        if not m:
            break
        nums.append(int(m.group()))
        if m.group() != p:
            break
    return tuple(nums)


def machine() -> str:
    """'AMD EPYC 7B13, 2 cores, no GPU/NPU': what the times were measured on."""
    model = ""
    try:
        model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                      if l.startswith("model name")), "")
    except OSError:
        pass
    accel = "GPU" if shutil.which("nvidia-smi") else "NPU" if shutil.which("npu-smi") else "no GPU/NPU"
    return f"{model or 'CPU'}, {os.cpu_count()} cores, {accel}"


def main_mindspore() -> str:
    """The MindSpore of the checkout's .venv, which writes the MindRecord data (without importing it here)."""
    out = subprocess.run([MAIN_PY, "-c", "from importlib.metadata import version; print(version('mindspore'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "?"


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# results: ms_gpt4image/tested_matrix.json and docs/compatibility.md

def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def row_key(r: Dict) -> Tuple:
    return version_key(r["python"]), version_key(r["mindspore"]), r["mindspore"]


def load_matrix() -> Dict:
    data = json.loads(MATRIX_JSON.read_text()) if MATRIX_JSON.exists() else {}
    data.setdefault("note", NOTE)
    data.setdefault("rows", [])
    return data


def save_row(row: Dict) -> Dict:
    """Replaces the row of the same python x mindspore (read fresh, written atomically); returns the data."""
    data = load_matrix()
    rows = [r for r in data["rows"] if (r["python"], r["mindspore"]) != (row["python"], row["mindspore"])]
    rows.append(row)
    data["rows"] = sorted(rows, key=row_key)
    atomic_write(MATRIX_JSON, json.dumps(data, indent=2) + "\n")
    return data


def fmt_s(x) -> str:
    if x is None:
        return "-"
    return f"{x:.0f} s" if x < 100 else f"{x / 60:.1f} min"


def table(data: Dict, command: str) -> str:
    head = ["Python", "MindSpore", "result", "install", "smoke wall"] + list(STEPS) + ["smoke size", "numpy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: List[str] = []
    for r in sorted(data["rows"], key=row_key):
        ms = r["mindspore"] + (f" ({r.get('package')}, pre-release)" if r.get("prerelease") else "")
        result = r["result"].replace("|", "\\|")
        steps = r.get("steps", {})
        size = {"full": "ResNet-18 w8, 80 img", "small": "simple_cnn w4, 32 img"}.get(r.get("smoke"), "-")
        cells = [r["python"], ms, result, fmt_s(r.get("install_s")), fmt_s(r.get("wall_s"))]
        failed = set(r.get("failed_steps", ()))
        cells += [fmt_s(steps.get(s)) + (" (failed)" if s in failed else "") for s in STEPS]
        cells += [size, r.get("numpy") or "-"]
        lines.append("| " + " | ".join(cells) + " |")
        name = f"Python {r['python']} x {r.get('package', 'mindspore')} {r['mindspore']}"
        if r.get("pip_check") not in (None, "ok"):
            notes.append(f"{name}: `pip check` says: {r['pip_check']}")
        if r.get("pip_dry_run"):
            notes.append(f"{name}: `pip install {r.get('package', 'mindspore')}=={r['mindspore']} <this package>` "
                         f"would install both distributions into the one `mindspore` import package "
                         f"(the package depends on the distribution `mindspore`): {r['pip_dry_run']}; the row "
                         f"installs the package with `--no-deps` and its other dependencies")
        for other in r.get("also_failed", ()):
            notes.append(f"{name}: also failed: {other}")
        if r["result"] != "passed" and not r.get("also_failed") and r.get("failed_steps") == ["doctor"]:
            notes.append(f"{name}: every step but doctor passed")
    if any(r.get("prerelease") and r["mindspore"].startswith("2.6.") and r["result"] == "passed"
           for r in data["rows"]):
        notes.append("2.6: no release wheel on PyPI; its pre-release build (mindspore-dev, above) passed")
    for v in UNTESTED:
        lines.append("| 3.9 - 3.12 | " + v + ".x | " + UNTESTED_TEXT + " |" + " |" * (len(head) - 3))
    dates = sorted(r["date"] for r in data["rows"] if r.get("date")) or [datetime.date.today().isoformat()]
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} - {dates[-1]}"
    commands = sorted({r.get("command") or command for r in data["rows"]}) or [command]
    writers = sorted({r["data_written_by"] for r in data["rows"] if r.get("data_written_by")})
    machines = sorted({r["machine"] for r in data["rows"] if r.get("machine")})
    steps = ("install = a new venv and `pip install mindspore==V <this package>` (non-editable, so pip resolves "
             "the declared ranges; wheels from pip's cache where it had them); doctor = `gpt4image doctor "
             "--no-run-check` + `gpt4image doctor`; train = a 2-epoch run stopped after epoch 1 "
             "(`stop_at_epoch=1`); resume = `gpt4image train ... --resume` to the end; evaluate, export (which "
             "reloads the MindIR and compares logits), predict (4 PNG files on the MindIR); msrun = 1 epoch on 2 "
             "CPU workers (data parallel over loopback). Every step runs the installed console scripts from a "
             "directory outside the checkout, with no PYTHONPATH. The MindRecord data is written once per run by "
             f"MindSpore {' / '.join(writers) or '2.7.2'} and read by every version. Times are wall-clock"
             + (f" on {'; '.join(machines)}" if machines else "") + ", shared with other jobs.")
    return "\n".join([
        "", *lines, "",
        *([*("- " + n.replace("|", "\\|") for n in notes), ""] if notes else []),
        steps, "",
        "Produced by " + ", ".join(f"`{c}`" for c in commands) + f" (scripts/test_compat.py) on {when}. "
        "The same results are in `ms_gpt4image/tested_matrix.json`, which `gpt4image doctor` reads; "
        "`make test-compat` re-runs what has not passed (`--force`: everything) and refreshes this table.", ""])


def write_doc(data: Dict, command: str) -> None:
    body = table(data, command)
    if DOC.exists():
        text = DOC.read_text()
        if OPEN in text:
            before, rest = text.split(OPEN, 1)
            after = rest.split(CLOSE, 1)[1] if CLOSE in rest else rest
            if CLOSE not in rest:
                after = "\n" + after.lstrip("\n") if after.strip() else "\n"
            text = before + OPEN + body + CLOSE + after
        else:
            text = text.rstrip("\n") + "\n\n## Tested matrix\n\n" + OPEN + body + CLOSE + "\n"
    else:
        text = ("# Compatibility\n\nThe Python x MindSpore combinations that `make test-compat` installed and ran "
                "the command-line smoke on (train, resume, evaluate, export, predict, 2-worker msrun):\n\n"
                + OPEN + body + CLOSE + "\n")
    atomic_write(DOC, text)


# ------------------------------------------------------------------------------------------------
# running commands

NOISE = re.compile(r"total_instance_count|^\s*$|^\s*warnings\.warn|^\[WARNING\]|UserWarning|DeprecationWarning")
ERRORISH = re.compile(r"(Error|Exception|error:|ERROR|failed|Traceback|Killed|Aborted|Segmentation)")


def last_error_line(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if not NOISE.search(l)]
    for line in reversed(lines):
        if ERRORISH.search(line) and not line.startswith("Traceback"):
            return line[:300]
    return (lines[-1][:300] if lines else "no output")


class StepFailed(Exception):
    def __init__(self, step: str, line: str):
        super().__init__(f"{step}: {line}")
        self.step, self.line = step, line


def run_step(name: str, cmd: Sequence, cwd: Path, env: Dict, logs: Path, timeout: float,
             append: bool = False) -> subprocess.CompletedProcess:
    """Runs cmd; its command line, output and exit status go to logs/<name>.log; a non-zero exit raises."""
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [str(c) for c in cmd]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        proc = subprocess.CompletedProcess(cmd, None, out, err)
    dt = time.monotonic() - t0
    with open(logs / f"{name}.log", "a" if append else "w") as f:
        f.write(f"$ {shlex.join(cmd)}\n# cwd {cwd}; exit {proc.returncode}; {dt:.1f} s\n")
        f.write(f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}\n")
    if proc.returncode is None:
        raise StepFailed(name, f"timed out after {timeout:.0f} s ({last_error_line(proc.stderr)})")
    if proc.returncode != 0:
        raise StepFailed(name, f"exit {proc.returncode}: {last_error_line(proc.stderr + proc.stdout)}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(venv: Optional[Path] = None) -> Dict:
    """This process's environment without Python/venv variables; with venv: as if it were activated."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(ROOT / ".venv"))]
    if venv is not None:
        path.insert(0, str(venv / "bin"))
        env["VIRTUAL_ENV"] = str(venv)
    env.update(PATH=os.pathsep.join(path), GLOG_v="3", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONNOUSERSITE="1")
    return env


# ------------------------------------------------------------------------------------------------
# data: synthetic idx images -> describe -> embed -> pack, with the checkout's .venv

def demo_args(data_dir, out: Path, size: Dict, batch: int, epochs: int) -> List[str]:
    """`train -c demo_fmnist` arguments for one smoke size (model, width) on `data_dir`, writing to `out`."""
    sets = {"data_dir": data_dir, "output_dir": out, "model": size["model"],
            "model_kwargs": f"{{width: {size['width']}}}", "batch_size": batch, "eval_batch_size": size["batch"],
            "epoch_size": epochs, "warmup_epochs": 0, "lr": 0.05}
    return ["-c", "demo_fmnist"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def prepare_data(base: Path, logs: Path, sizes: Sequence[str]) -> Dict:
    """{'full'/'small' (those in sizes): packed dir, 'images': folder of PNGs, 'written_by': MindSpore version},
    made with the main venv."""
    from PIL import Image
    sys.path.insert(0, str(ROOT / "tests"))
    from idx_data import synthetic_images, write_idx  # numpy, as PIL: the main venv has them
    if not MAIN_PY.exists():
        raise SystemExit(f"{MAIN_PY} is missing: run `make setup` first")
    idx = base / "idx"
    idx.mkdir(parents=True)
    for prefix, n, seed in (("train", 96, 0), ("t10k", 48, 1)):
        images, labels = synthetic_images(n, seed)
        write_idx(idx / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(idx / f"{prefix}-labels-idx1-ubyte.gz", labels)
    pngs = base / "images"
    pngs.mkdir()
    images, _ = synthetic_images(4, 7)
    for i, im in enumerate(images):
        Image.fromarray(im).save(pngs / f"img{i}.png")
    env = clean_env()
    env["PYTHONPATH"] = str(ROOT)  # the checkout's export half, as tests/conftest.py runs it
    out = {"images": pngs, "written_by": main_mindspore()}
    for name, size in DATASETS.items():
        if name not in sizes:
            continue
        d = base / name
        run_step(f"data-{name}", [MAIN_PY, "-m", "export", "describe", "--source", "fashion-mnist", "--root", idx,
                                  "--limit", size["train"], "--out", d / "desc.jsonl"], ROOT, env, logs, 900)
        run_step(f"data-{name}", [MAIN_PY, "-m", "export", "embed", "--descriptions", d / "desc.jsonl",
                                  "--out", d / "emb", "--batch-size", 32], ROOT, env, logs, 900, append=True)
        run_step(f"data-{name}", [MAIN_PY, "-m", "export", "pack", "--source", "fashion-mnist", "--root", idx,
                                  "--descriptions", d / "desc.jsonl", "--embeddings", d / "emb",
                                  "--eval-limit", size["eval"], "--out", d / "data"], ROOT, env, logs, 900,
                 append=True)
        out[name] = d / "data"
    return out


# ------------------------------------------------------------------------------------------------
# source snapshot: what `pip install <the repo>` builds from

def snapshot(dest: Path) -> Path:
    """The checkout's tracked and not-ignored files, copied once per run (others edit the tree meanwhile)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(".compat/"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def prepare_source(src: Path, combo: Combo) -> None:
    """The snapshot's tested_matrix.json without this combination's row (it is being re-tested: a stale
    'failed' row would make the installed doctor exit 1), and no build leftovers of the previous install."""
    data = load_matrix()
    data["rows"] = [r for r in data["rows"] if (r["python"], r["mindspore"]) != (combo.python, combo.version)]
    (src / "ms_gpt4image" / "tested_matrix.json").write_text(json.dumps(data, indent=2) + "\n")
    shutil.rmtree(src / "build", ignore_errors=True)
    for p in src.glob("*.egg-info"):
        shutil.rmtree(p, ignore_errors=True)


def declared_dependencies(src: Path) -> List[str]:
    import tomllib
    return tomllib.loads((src / "pyproject.toml").read_text())["project"]["dependencies"]


# ------------------------------------------------------------------------------------------------
# one combination

def find_python(minor: str) -> Path:
    root = os.environ.get("PYENV_ROOT")
    if not root:
        try:
            root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            root = str(Path.home() / ".pyenv")
    found = sorted(glob.glob(f"{root}/versions/{minor}.*/bin/python"),
                   key=lambda p: version_key(Path(p).parents[1].name))
    found = [p for p in found if re.fullmatch(re.escape(minor) + r"\.\d+", Path(p).parents[1].name)]
    if not found:
        raise FileNotFoundError(f"no Python {minor} under {root}/versions (pyenv install {minor})")
    return Path(found[-1])


def install(combo: Combo, venv: Path, src: Path, env: Dict, logs: Path, info: Dict) -> None:
    """venv + pip install; fills info (pip's resolution, versions); raises StepFailed('install', ...)."""
    py = find_python(combo.python)
    info["python_full"] = Path(py).parents[1].name
    if venv.exists():
        shutil.rmtree(venv)
    run_step("install", [py, "-m", "venv", venv], ROOT, env, logs, 300)
    vpy = venv / "bin" / "python"
    pip = [vpy, "-m", "pip", "install", "--no-input", "--progress-bar", "off"]
    if combo.package == "mindspore":
        run_step("install", pip + [combo.requirement, src], ROOT, env, logs, 1800, append=True)
    else:
        # the package depends on the distribution `mindspore`: with another distribution of the same import
        # package (mindspore-dev) pip would add a `mindspore` release on top; record what it would do, then
        # install the pre-release, the package without deps and its other declared dependencies
        try:
            dry = run_step("install", pip + ["--dry-run", combo.requirement, src], ROOT, env, logs, 1800,
                           append=True)
            would = [l for l in dry.stdout.splitlines() if l.startswith("Would install")]
            info["pip_dry_run"] = would[-1][:400] if would else last_error_line(dry.stdout)
        except StepFailed as e:
            info["pip_dry_run"] = f"pip refused: {e.line}"
        others = [d for d in declared_dependencies(src) if not re.match(r"mindspore\b(?!-)", d)]
        run_step("install", pip + [combo.requirement] + others, ROOT, env, logs, 1800, append=True)
        run_step("install", pip + ["--no-deps", src], ROOT, env, logs, 600, append=True)
    check = subprocess.run([vpy, "-m", "pip", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    info["pip_check"] = "ok" if check.returncode == 0 else " / ".join(check.stdout.strip().splitlines())[:400]
    with open(logs / "install.log", "a") as f:
        f.write(f"--- pip check (exit {check.returncode})\n{check.stdout}{check.stderr}\n")
    freeze = subprocess.run([vpy, "-m", "pip", "freeze", "--all"], cwd=ROOT, env=env, capture_output=True,
                            text=True).stdout
    (logs / "freeze.txt").write_text(freeze)
    pins = dict(l.split("==", 1) for l in freeze.splitlines() if "==" in l)
    for name in ("numpy", "mindcv", "mindspore", "mindspore-dev"):
        norm = {k.lower().replace("_", "-"): v for k, v in pins.items()}
        if name in norm:
            info[name.replace("-", "_") + "_installed"] = norm[name]


def chain(timed, gpt, common, out, work, data, trained_to) -> None:
    """train (stopped after epoch 1) -> resume -> evaluate -> export -> predict on the MindIR."""
    timed("train", [[gpt, "train", *common, "--set", "stop_at_epoch=1"]], trained_to(1))

    def resumed(proc):
        trained_to(2)(proc)
        if "resumed from" not in proc.stdout + proc.stderr:
            raise StepFailed("resume", "no 'resumed from' in the output")
    timed("resume", [[gpt, "train", *common, "--resume"]], resumed)

    def evaluated(proc):
        result = json.loads(proc.stdout[proc.stdout.index("{"):])
        if "top1" not in result:
            raise StepFailed("evaluate", f"no top1 in {proc.stdout[-200:]!r}")
    timed("evaluate", [[gpt, "evaluate", *common, "--ckpt", out / "last.ckpt"]], evaluated)

    deploy = work / "deploy" / "net"

    def exported(_):
        if not deploy.with_suffix(".mindir").is_file():
            raise StepFailed("export", f"{deploy}.mindir not written")
    timed("export", [[gpt, "export", *common, "--ckpt", out / "last.ckpt", "--out", deploy]], exported)

    pngs = sorted(data["images"].glob("*.png"))

    def predicted(proc):
        if sum(1 for p in pngs if p.name in proc.stdout) != len(pngs):
            raise StepFailed("predict", f"not every image is in the table: {proc.stdout[-300:]!r}")
    timed("predict", [[gpt, "predict", *pngs, "--model", deploy.with_suffix(".mindir"), "--topk", 3]],
          predicted)


def smoke(combo: Combo, venv: Path, data: Dict, env: Dict, logs: Path, steps: Dict,
          timeout: float, failures: List[StepFailed]) -> None:
    """The command lines, from a temporary directory outside the checkout; fills steps {name: seconds} and
    failures. doctor and msrun do not depend on the other steps: the smoke goes on past their failures;
    train -> resume -> evaluate -> export -> predict is a chain and stops at its first failure."""
    size = SMOKES[combo.smoke]
    bin_ = venv / "bin"
    work = Path(tempfile.mkdtemp(prefix=f"gpt4image-compat-{combo.label}-"))
    try:
        def timed(name, cmds, check=None, each=False):
            """Runs cmds in order (each=True: all of them even after a failure, the first failure raised)."""
            t0 = time.monotonic()
            first = None
            try:
                for i, cmd in enumerate(cmds):
                    try:
                        proc = run_step(name, cmd, work, env, logs, timeout, append=i > 0)
                        if check:
                            try:
                                check(proc)
                            except StepFailed:
                                raise
                            except Exception as e:  # the output is not what the step should leave
                                raise StepFailed(name, f"{type(e).__name__}: {e}") from None
                    except StepFailed as e:
                        if not each:
                            raise
                        first = first or e
                if first:
                    raise first
            finally:
                steps[name] = round(time.monotonic() - t0, 1)

        # the installed package, not a checkout on the path
        where = run_step("where", [bin_ / "python", "-c", "import ms_gpt4image, mindspore; "
                                   "print(ms_gpt4image.__file__); print(mindspore.__version__)"], work, env, logs, 300)
        if not where.stdout.startswith(str(venv)):
            raise StepFailed("where", f"ms_gpt4image imported from {where.stdout.split()[0]}, not the venv")
        steps["mindspore_reported"] = where.stdout.split()[-1]

        gpt = bin_ / "gpt4image"
        out = work / "run"
        common = demo_args(data[size["data"]], out, size, batch=size["batch"], epochs=2)
        try:
            timed("doctor", [[gpt, "doctor", "--no-run-check"], [gpt, "doctor"]], each=True)
        except StepFailed as e:  # name doctor's bad checks rather than its advice
            text = (logs / "doctor.log").read_text(errors="replace")
            bad = [" ".join(l.split()) for l in text.splitlines() if re.match(r"^\S+\s+bad\s", l)]
            failures.append(StepFailed("doctor", e.line.split(":", 1)[0] + ": " + "; ".join(dict.fromkeys(bad))
                                       if bad else e.line))

        def trained_to(epoch):
            def check(_):
                rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if l.strip()]
                got = [r["epoch"] for r in rows]
                if got != list(range(1, epoch + 1)):
                    raise StepFailed("train" if epoch == 1 else "resume", f"log.jsonl has epochs {got}")
            return check

        try:
            chain(timed, gpt, common, out, work, data, trained_to)
        except StepFailed as e:
            failures.append(e)

        # msrun takes a script path and runs `python SCRIPT` with the python on PATH (the venv's, first);
        # scripts/launch.py would put the checkout on sys.path, so the launcher imports the installed package
        launcher = work / "launch_installed.py"
        launcher.write_text("import sys\nfrom ms_gpt4image.__main__ import main\n\n"
                            "if __name__ == '__main__':\n    sys.exit(main())\n")
        dist_out = work / "dist"
        log_dir = work / "msrun_logs"
        dist = demo_args(data[size["data"]], dist_out, size, batch=max(size["batch"] // 2, 4), epochs=1)

        def distributed(_):
            summary = json.loads((dist_out / "summary.json").read_text())
            if summary.get("devices") != 2:
                raise StepFailed("msrun", f"summary.json devices = {summary.get('devices')}, expected 2")
        try:
            timed("msrun", [[bin_ / "msrun", "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
                             "--join=True", f"--log_dir={log_dir}", launcher, "train", *dist]], distributed)
        except StepFailed as e:  # msrun's own exit line says little: the workers' last error line
            worker_logs = "\n".join(p.read_text(errors="replace") for p in sorted(log_dir.glob("worker*.log")))
            failures.append(StepFailed("msrun", e.line.split(":", 1)[0] + ": " + last_error_line(worker_logs))
                            if e.line.startswith("exit") and worker_logs.strip() else e)
        finally:
            for p in sorted(log_dir.glob("*.log")):
                shutil.copy2(p, logs / f"msrun_{p.name}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_combo(combo: Combo, src: Path, data: Dict, keep: bool, timeout: float, command: str) -> Dict:
    venv = COMPAT_DIR / combo.label
    logs = COMPAT_DIR / "logs" / combo.label
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    env = clean_env(venv)
    row: Dict = {"python": combo.python, "mindspore": combo.version}
    if combo.prerelease:
        row.update(package=combo.package, prerelease=True)
    info: Dict = {}
    steps: Dict = {}
    result = "passed"
    t0 = time.monotonic()
    try:
        log(f"{combo.label}: installing {combo.requirement} + the package with Python {combo.python}")
        prepare_source(src, combo)
        try:
            install(combo, venv, src, env, logs, info)
        finally:
            row["install_s"] = round(time.monotonic() - t0, 1)
        log(f"{combo.label}: installed in {row['install_s']:.0f} s ({info}); {combo.smoke} smoke")
        t1 = time.monotonic()
        failures: List[StepFailed] = []
        try:
            smoke(combo, venv, data, env, logs, steps, timeout, failures)
        finally:
            row["wall_s"] = round(time.monotonic() - t1, 1)
        if failures:
            result = f"failed: {failures[0].step}: {failures[0].line}"
            row["failed_steps"] = list(dict.fromkeys(f.step for f in failures))
            if len(failures) > 1:
                row["also_failed"] = [f"{f.step}: {f.line}" for f in failures[1:]]
    except StepFailed as e:
        result = f"failed: {e.step}: {e.line}"
    except Exception as e:  # a bug of this script or the machine: still a row, with the reason
        result = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
    finally:
        if not keep:
            shutil.rmtree(venv, ignore_errors=True)
    reported = steps.pop("mindspore_reported", None)
    row.update(result=result, install_s=row.get("install_s"), wall_s=row.get("wall_s"),
               steps=steps, smoke=combo.smoke, python_full=info.get("python_full"),
               numpy=info.get("numpy_installed"), mindcv=info.get("mindcv_installed"),
               pip_check=info.get("pip_check"), date=datetime.date.today().isoformat(), command=command,
               machine=machine(), data_written_by=data["written_by"])
    if reported and reported != combo.version:
        row["mindspore_reported"] = reported
    if "pip_dry_run" in info:
        row["pip_dry_run"] = info["pip_dry_run"]
    log(f"{combo.label}: {result} (install {row['install_s']} s, smoke {row.get('wall_s')} s, steps {steps}); "
        f"logs in {logs}")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], metavar="PY:VERSION",
                    help="run these combinations (3.11:2.7.2, 3.11:mindspore-dev==2.6.0.dev20250323); "
                         "repeatable or comma-separated; default: the default matrix")
    ap.add_argument("--keep-venvs", action="store_true", help="keep .compat/py*-ms*/ after the smoke (0.8 GB+ each)")
    ap.add_argument("--force", action="store_true", help="re-run combinations already recorded as passed")
    ap.add_argument("--step-timeout", type=float, default=900, help="seconds per command (default 900)")
    ap.add_argument("--smoke", choices=("full", "small", "auto"), default="full",
                    help="the smoke's size: full (default) = ResNet-18 width 8 on 80 images; small = simple_cnn "
                         "width 4 on 32; auto = small for MindSpore 2.9/2.10 (CPU convolutions ~100x slower on "
                         "larger tensors; at width 8 the full smoke took 48 s on 2.10.0 against 42 s on 2.7.2)")
    ap.add_argument("--table-only", action="store_true", help="only rewrite docs/compatibility.md from the JSON")
    ap.add_argument("--list", action="store_true", help="print the default matrix and exit")
    a = ap.parse_args(argv)
    args = list(sys.argv[1:] if argv is None else argv)
    command = "python scripts/test_compat.py" + "".join(" " + shlex.quote(x) for x in args)
    if os.environ.get("MAKELEVEL") and not args:
        command = "make test-compat"
    if a.list:
        print("\n".join(DEFAULT_MATRIX))
        return 0
    if a.table_only:
        write_doc(load_matrix(), "make test-compat")
        print(f"wrote {DOC}")
        return 0
    try:
        combos = [Combo.parse(t) for item in (a.only or DEFAULT_MATRIX) for t in item.split(",") if t.strip()]
    except argparse.ArgumentTypeError as e:
        ap.error(f"--only: {e}")
    if a.smoke != "auto":
        combos = [Combo(c.python, c.package, c.version, a.smoke) for c in combos]
    done = {(r["python"], r["mindspore"]) for r in load_matrix()["rows"] if r["result"] == "passed"}
    todo = [c for c in combos if a.force or (c.python, c.version) not in done]
    for c in combos:
        if c not in todo:
            log(f"{c.label}: already passed (ms_gpt4image/tested_matrix.json); --force re-runs it")
    if not todo:
        write_doc(load_matrix(), "make test-compat")
        return 0
    gitignore = ROOT / ".gitignore"
    if ".compat/" not in gitignore.read_text().split():
        with open(gitignore, "a") as f:
            f.write(".compat/\n")
    COMPAT_DIR.mkdir(exist_ok=True)
    t0 = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="gpt4image-compat-"))
    failed = 0
    try:
        log(f"preparing the tiny packed data with {MAIN_PY} in {base}")
        data = prepare_data(base / "data", COMPAT_DIR / "logs" / "data", {SMOKES[c.smoke]["data"] for c in todo})
        src = snapshot(base / "src")
        log(f"source snapshot in {src}; {len(todo)} combination(s): {', '.join(c.label for c in todo)}")
        for combo in todo:
            row = run_combo(combo, src, data, a.keep_venvs, a.step_timeout, command)
            failed += row["result"] != "passed"
            write_doc(save_row(row), command)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    log(f"done in {(time.monotonic() - t0) / 60:.1f} min: {len(todo) - failed} passed, {failed} failed; "
        f"{MATRIX_JSON.relative_to(ROOT)} and {DOC.relative_to(ROOT)} updated")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
