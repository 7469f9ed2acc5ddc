"""The supported range (compat.py): no MindSpore API newer than the floor outside the compatibility
module, the MindSpore/CANN table, and `doctor` on this machine and on a combination it must flag."""
import ast
import json
import os
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from ms_gpt4image import compat

PACKAGE_CODE = sorted([*(ROOT / "ms_gpt4image").rglob("*.py"), *(ROOT / "export").rglob("*.py"),
                       *(ROOT / "scripts").glob("*.py")])


METHODS = {"set_init_step"}  # methods of MindSpore objects (a dataset): flagged on any object


def newer_api_uses(source: str):
    """(line, name) of every MindSpore API in compat.NEWER_APIS that `source` uses: attributes reached
    from a name bound to a mindspore import, and names imported from mindspore."""
    tree = ast.parse(source)
    aliases, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] == "mindspore"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mindspore":
            parts = node.module.split(".")
            found += [(node.lineno, p) for p in parts if p in compat.NEWER_APIS]
            for a in node.names:
                aliases.add(a.asname or a.name)
                if a.name in compat.NEWER_APIS:
                    found.append((node.lineno, a.name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in compat.NEWER_APIS:
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if node.attr in METHODS or isinstance(root, ast.Name) and root.id in aliases:
                found.append((node.lineno, node.attr))
    return sorted(set(found))


def test_the_checker_finds_newer_apis():
    code = ("import mindspore as ms\nimport mindspore.nn as nn\nfrom mindspore.nn.utils import no_init_parameters\n"
            "ms.set_device('CPU')\nnn.utils.no_init_parameters\nself.runtime = 1\nms.set_context(mode=0)\n"
            "train_ds.set_init_step(5)\n")
    assert newer_api_uses(code) == [(3, "no_init_parameters"), (4, "set_device"), (5, "no_init_parameters"),
                                    (8, "set_init_step")]


@pytest.mark.parametrize("path", PACKAGE_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_mindspore_api_newer_than_the_floor_outside_compat(path):
    if path.name == "compat.py":
        return
    uses = newer_api_uses(path.read_text())
    assert not uses, (f"{path.relative_to(ROOT)} calls MindSpore APIs newer than {compat.MINDSPORE_FLOOR}: "
                      f"{[(line, name, compat.NEWER_APIS[name]) for line, name in uses]}; go through compat.py")


def test_version_ranges_and_the_cann_table():
    assert compat.version_tuple("2.7.1.post1") == (2, 7, 1) and compat.version_tuple("8.0.RC2") == (8, 0)
    assert compat.mindspore_supported("2.3.0") and compat.mindspore_supported("2.10.0")
    assert not compat.mindspore_supported("2.2.14") and not compat.mindspore_supported("2.11.0")
    assert compat.python_supported((3, 9)) and compat.python_supported((3, 12)) and not compat.python_supported((3, 13))
    assert compat.cann_for("2.7.1.post1") == "8.3.RC1" and compat.cann_for("2.8.0") is None
    assert compat.cann_pair_verdict("2.7.2", "8.5.0")["ok"] is True
    bad = compat.cann_pair_verdict("2.7.2", "8.0.0")
    assert bad["ok"] is False and "install mindspore==2.4.10" in bad["message"]
    assert compat.cann_pair_verdict("2.8.0", "8.5.0")["ok"] is None
    assert compat.parse_cann_info("package_name=Ascend-cann-toolkit\nversion=8.0.RC2\ninnerversion=V100\n") == "8.0.RC2"


def test_set_device_selects_the_target():
    # in a fresh process: MindSpore refuses set_device once kernels have run (other test files run some in
    # this one, in whichever order `pytest -n` gives them)
    p = run_cli("-c", "import mindspore as ms; from ms_gpt4image import compat; compat.set_device('CPU'); "
                      "print(ms.get_context('device_target'))")
    assert p.stdout.strip().splitlines()[-1] == "CPU"


def _checks(stdout):
    """doctor's table: {check: 'status  text'}."""
    return dict(l.split(None, 1) for l in stdout.split("\n\n")[0].splitlines())


def test_doctor_on_this_machine_passes():
    p = run_cli("-m", "ms_gpt4image", "doctor")
    checks = _checks(p.stdout)
    assert checks["mindspore"].startswith("ok") and checks["devices"].startswith("ok"), p.stdout
    assert p.stdout.strip().endswith("all good")


def test_doctor_flags_a_mindspore_built_for_another_cann(tmp_path):
    """A CANN 8.0.0 toolkit (as its install info file says) with this venv's MindSpore 2.7.2: exit 1 and
    the fix in words."""
    info = tmp_path / "ascend-toolkit" / "x86_64-linux" / "ascend_toolkit_install.info"
    info.parent.mkdir(parents=True)
    info.write_text("package_name=Ascend-cann-toolkit\nversion=8.0.0\n")
    env = dict(os.environ, ASCEND_HOME_PATH=str(tmp_path / "ascend-toolkit"), PYTHONPATH=str(ROOT), GLOG_v="3")
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "ms_gpt4image", "doctor", "--no-run-check"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    checks = _checks(p.stdout)
    assert checks["cann"].startswith("ok") and "8.0.0" in checks["cann"], p.stdout
    assert checks["mindspore/cann"].startswith("bad") and "built for CANN 8.5.0" in checks["mindspore/cann"]
    assert "- install mindspore==2.4.10 (built for CANN 8.0.0), or move to CANN 8.5.0" in p.stdout


def test_the_tested_matrix_is_well_formed():
    rows = json.loads((ROOT / "ms_gpt4image" / "tested_matrix.json").read_text())["rows"]
    for r in rows:
        assert set(r) >= {"python", "mindspore", "result"} and compat.mindspore_supported(r["mindspore"]) or \
            ".dev" in r["mindspore"], r
