"""`python -m ms_gpt4image doctor`: what a cluster user runs first.

Prints Python, MindSpore, mindcv and CANN versions, whether the MindSpore/CANN pair is a known-good one,
the devices MindSpore sees (`run_check`), whether msrun is there, and whether the combination is inside
the tested matrix (docs/compatibility.md). Exits 1 on a known-bad combination, with the fix in words.
"""
import contextlib
import glob
import io
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import compat

# What `make test-compat` ran (scripts/test_compat.py writes it; docs/compatibility.md shows it)
MATRIX = Path(__file__).resolve().parent / "tested_matrix.json"


def tested_pairs() -> Dict[Tuple[str, str], str]:
    """{(python 'X.Y', mindspore 'A.B.C'): result} of the tested matrix."""
    rows = json.loads(MATRIX.read_text())["rows"] if MATRIX.exists() else []
    return {(r["python"], r["mindspore"]): r["result"] for r in rows}


CANN_ROOTS = ("$ASCEND_HOME_PATH", "$ASCEND_TOOLKIT_HOME", "/usr/local/Ascend/ascend-toolkit/latest",
              "/usr/local/Ascend/cann", "/usr/local/Ascend/cann-*")


def find_cann() -> Tuple[Optional[str], Optional[str]]:
    """(version, info file) of the CANN toolkit: `version=` of <root>/<arch>-linux/ascend_toolkit_install.info
    under $ASCEND_HOME_PATH, $ASCEND_TOOLKIT_HOME or the default install paths."""
    for root in CANN_ROOTS:
        root = os.path.expandvars(root)
        if root.startswith("$"):
            continue  # the variable is not set
        for base in sorted(glob.glob(root), reverse=True):
            for info in sorted(glob.glob(os.path.join(base, "*-linux", "ascend_toolkit_install.info"))):
                version = compat.parse_cann_info(Path(info).read_text(errors="replace"))
                if version:
                    return version, info
    return None, None


def _version(module: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:  # not installed (or installed without metadata)
        return None


def _mindspore_version() -> Tuple[Optional[str], Optional[str]]:
    """(version, import error) of the MindSpore this interpreter imports (whatever its distribution's name:
    mindspore, mindspore-dev, ...): (None, None) when there is none."""
    import importlib.util
    if importlib.util.find_spec("mindspore") is None:
        return None, None
    try:
        import mindspore
        return mindspore.__version__, None
    except Exception as e:  # e.g. CANN libraries not on the library path
        return _version("mindspore"), f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _run_check(device: Optional[str]) -> Tuple[bool, str]:
    """MindSpore's own installation check, on `device` if given; its output, in one line."""
    import mindspore as ms
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            if device:
                compat.set_device(device)
            ms.run_check()
        text = " ".join(out.getvalue().split())
        return "successfully" in text or "installed successfully" in text, text
    except Exception as e:  # the device is absent or its driver/CANN does not load
        return False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def diagnose(device: Optional[str] = None, run_check: bool = True) -> Dict:
    """Every check as {name: (status, text)}, status ok | warn | bad | info; and the fixes for the bad ones."""
    checks: Dict[str, Tuple[str, str]] = {}
    fixes: List[str] = []
    py = ".".join(map(str, sys.version_info[:3]))
    if compat.python_supported():
        checks["python"] = ("ok", f"{py} ({platform.python_implementation()})")
    else:
        checks["python"] = ("bad", f"{py}: outside the supported 3.9 - 3.12")
        fixes.append("use Python 3.9, 3.10, 3.11 or 3.12 (e.g. conda create -n gpt4image python=3.10)")

    ms_version, ms_error = _mindspore_version()
    if ms_error:
        checks["mindspore"] = ("bad", f"installed but does not import: {ms_error}")
        fixes.append("MindSpore fails to import: on Ascend, source CANN's set_env.sh; otherwise reinstall the "
                     "MindSpore release built for your CANN")
        ms_version = None
    elif ms_version is None:
        checks["mindspore"] = ("bad", "not installed")
        fixes.append("install the MindSpore release built for your CANN (docs/cluster.md), e.g. pip install "
                     "mindspore==2.7.2 for CANN 8.5.0; on CPU, mindspore==2.7.2")
    elif not compat.mindspore_supported(ms_version):
        checks["mindspore"] = ("bad", f"{ms_version}: outside the supported {compat.MINDSPORE_FLOOR} - "
                                      f"{compat.MINDSPORE_CEILING}")
        fixes.append(f"install a MindSpore from {compat.MINDSPORE_FLOOR} to {compat.MINDSPORE_CEILING} built for "
                     f"your CANN")
    elif ms_version.startswith(tuple(v + "." for v in compat.SLOW_ON_CPU)):
        checks["mindspore"] = ("warn", f"{ms_version}: CPU convolutions are ~100x slower than in 2.7/2.8 "
                                       f"(fine on Ascend/GPU; for CPU runs use 2.7.2)")
    else:
        checks["mindspore"] = ("ok", ms_version)

    mindcv = _version("mindcv")
    checks["mindcv"] = ("ok", mindcv) if mindcv else ("bad", "not installed")
    if not mindcv:
        fixes.append("pip install mindcv==0.3.0")

    cann, info = find_cann()
    if cann is None:
        checks["cann"] = ("info", "not found (no ascend_toolkit_install.info under $ASCEND_HOME_PATH or "
                                  "/usr/local/Ascend): fine for CPU/GPU; on Ascend, source CANN's set_env.sh")
    else:
        checks["cann"] = ("ok", f"{cann} ({info})")
        if ms_version:
            verdict = compat.cann_pair_verdict(ms_version, cann)
            status = {True: "ok", False: "bad", None: "warn"}[verdict["ok"]]
            checks["mindspore/cann"] = (status, verdict["message"])
            if verdict["ok"] is False:
                fixes.append(verdict["message"].split(": ", 1)[1])

    beside = Path(sys.executable).parent / "msrun"  # an environment used without activating it
    msrun = shutil.which("msrun") or (str(beside) if beside.exists() else None)
    checks["msrun"] = ("ok", msrun) if msrun else ("warn", "not on PATH: data-parallel launches need it "
                                                          "(it comes with MindSpore >= 2.3; activate its environment)")
    if ms_version:
        pair = (f"{sys.version_info[0]}.{sys.version_info[1]}", ".".join(map(str, compat.version_tuple(ms_version)[:3])))
        result = tested_pairs().get(pair)
        if result == "passed":
            checks["tested"] = ("ok", f"Python {pair[0]} x MindSpore {pair[1]} passed the compatibility smoke")
        elif result is None:
            checks["tested"] = ("warn", f"Python {pair[0]} x MindSpore {pair[1]} is not in the tested matrix "
                                        f"(docs/compatibility.md): expected to work inside the supported range")
        else:
            checks["tested"] = ("bad", f"Python {pair[0]} x MindSpore {pair[1]} failed the compatibility smoke "
                                       f"({result}; docs/compatibility.md)")
            fixes.append("use a combination that passed in docs/compatibility.md")
        if run_check and checks["mindspore"][0] != "bad":
            ok, text = _run_check(device)
            checks["devices"] = ("ok" if ok else "bad", text)
            if not ok:
                fixes.append(f"MindSpore's run_check failed{' on ' + device if device else ''}: check the driver and "
                             f"that CANN's set_env.sh is sourced")
    return {"checks": checks, "fixes": fixes, "ok": not fixes}


def main(device: Optional[str] = None, run_check: bool = True) -> int:
    report = diagnose(device, run_check)
    width = max(len(k) for k in report["checks"])
    for name, (status, text) in report["checks"].items():
        print(f"{name:<{width}}  {status:<4}  {text}")
    if report["fixes"]:
        print("\nto fix:")
        for fix in report["fixes"]:
            print(f"- {fix}")
        return 1
    print("\nall good")
    return 0
