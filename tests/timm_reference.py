"""timm 0.3.2 (the version the DeiT code and the GPT4Image authors' DeiT code pin) as a reference, without
torchvision: `make setup` installs its wheel with --no-deps under .venv/ref/timm032 (outside
site-packages, so that nothing else imports this old timm). Its package `__init__`s import torchvision
and the model zoo, so they are bypassed: `timm`, `timm.data`, `timm.utils`, ... become empty packages
pointing at the real folders, and `module("scheduler.cosine_lr")` executes only that file (and the
timm files it imports itself)."""
import importlib
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / ".venv" / "ref" / "timm032" / "timm"
PACKAGES = ("", "data", "utils", "scheduler", "optim", "loss", "models", "models.layers")


def available() -> bool:
    return (ROOT / "version.py").is_file()


def _install_stub_packages():
    for name in PACKAGES:
        full = "timm" + ("." + name if name else "")
        mod = sys.modules.get(full)
        if mod is not None and getattr(mod, "_timm032_stub", False):
            continue
        if mod is not None:
            raise RuntimeError(f"another {full} is already imported ({getattr(mod, '__file__', '?')})")
        stub = types.ModuleType(full)
        stub.__path__ = [str(ROOT / name.replace(".", "/"))] if name else [str(ROOT)]
        stub._timm032_stub = True
        sys.modules[full] = stub


def module(name: str):
    """timm 0.3.2's `timm.<name>` module, e.g. module("data.auto_augment"), module("scheduler.cosine_lr")."""
    if not available():
        raise RuntimeError(f"timm 0.3.2 is not installed under {ROOT.parent} (run `make setup`)")
    _install_stub_packages()
    return importlib.import_module("timm." + name)
