"""Does the MindSpore installed here have every MindSpore API our code calls?

    python scripts/check_api_floor.py [--json OUT]

Reads the package's source (ms_gpt4image/, export/, scripts/) without importing it, collects every
dotted MindSpore path it reaches (`ms.set_context`, `nn.TrainOneStepWithLossScaleCell`, names imported
from mindspore, and the dataset methods in METHODS), and resolves each in the installed MindSpore.
Paths that only compat.py uses are reported apart: compat.py guards them. Run it under an older
MindSpore than the tested ones (e.g. 2.0.0 on Python 3.9) to learn what the floor needs; exit 1 when
a path used outside compat.py is missing.
"""
import argparse
import ast
import importlib
import inspect
import json
import sys
from pathlib import Path
from typing import Dict, Set

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"set_init_step": "mindspore.dataset.Dataset.set_init_step",
           "get_dataset_size": "mindspore.dataset.Dataset.get_dataset_size",
           "create_tuple_iterator": "mindspore.dataset.Dataset.create_tuple_iterator"}


def _dotted(node) -> list:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id] + parts[::-1] if isinstance(node, ast.Name) else []


def paths_used(source: str) -> Set[str]:
    tree = ast.parse(source)
    aliases: Dict[str, str] = {}
    used: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "mindspore":
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else "mindspore"
                    used.add(a.name)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mindspore":
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                used.add(f"{node.module}.{a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.keywords:  # keyword arguments are APIs too (choice_func=...)
            chain = _dotted(node.func)
            if chain and chain[0] in aliases:
                func = ".".join([aliases[chain[0]]] + chain[1:])
                used |= {f"{func}({k.arg}=)" for k in node.keywords if k.arg}
        if isinstance(node, ast.Attribute):
            chain = _dotted(node)
            if chain and chain[0] in aliases:
                used.add(".".join([aliases[chain[0]]] + chain[1:]))
            elif node.attr in METHODS:
                used.add(METHODS[node.attr])
    # keep the longest chains only (ms.amp.all_finite implies ms.amp)
    return {p for p in used if not any(q.startswith(p + ".") for q in used) or p.endswith("=)")}


def resolves(path: str) -> bool:
    """A dotted path exists; `func(kw=)` also needs `func` to accept the keyword."""
    if path.endswith("=)"):
        func, kw = path[:-2].split("(")
        if not resolves(func):
            return False
        obj = _get(func)
        try:
            params = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters
        except (TypeError, ValueError):  # a builtin without a signature: cannot tell
            return True
        return kw in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    return _get(path) is not None


def _get(path: str):
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:  # not a module (an attribute) or absent
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return None
            obj = getattr(obj, name)
        return obj
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args()
    import mindspore
    files = [*(ROOT / "ms_gpt4image").rglob("*.py"), *(ROOT / "export").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]
    where: Dict[str, Set[str]] = {}
    for f in files:
        for p in paths_used(f.read_text()):
            where.setdefault(p, set()).add(str(f.relative_to(ROOT)))
    missing = sorted(p for p in where if not resolves(p))
    guarded = [p for p in missing if where[p] == {"ms_gpt4image/compat.py"}]
    unguarded = [p for p in missing if p not in guarded]
    result = {"mindspore": mindspore.__version__, "python": sys.version.split()[0], "paths_checked": len(where),
              "missing_outside_compat": {p: sorted(where[p]) for p in unguarded}, "missing_guarded_by_compat": guarded}
    print(json.dumps(result, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if unguarded else 0


if __name__ == "__main__":
    sys.exit(main())
