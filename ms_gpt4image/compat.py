"""The MindSpore and Python versions we support, and every difference between them, in one place.

Supported: MindSpore 2.3 - 2.10 and Python 3.9 - 3.12 for the training half. On Ascend, MindSpore is
bound to the CANN version the cluster runs (KNOWN_GOOD_CANN, from the vendors' compatibility tables):
install the MindSpore matching your CANN first; this package never pins MindSpore.

Code outside this module calls only MindSpore APIs that exist at the floor (MINDSPORE_FLOOR); an API
that came later goes through a function here. `NEWER_APIS` lists the ones we know of with the version
that added them; tests/test_compat.py fails when code outside this module uses one.
"""
import re
import sys
from typing import Dict, Optional, Tuple

MINDSPORE_FLOOR = "2.3.0"
MINDSPORE_CEILING = "2.10"        # newest minor version tested
PYTHON_RANGE = ((3, 9), (3, 12))  # inclusive

# MindSpore attribute name -> the version that added it (MindSpore API docs)
NEWER_APIS = {
    "set_device": "2.5.0",            # mindspore.set_device; before it set_context(device_target=...)
    "no_init_parameters": "2.4.10",   # mindspore.nn.utils.no_init_parameters
    "device_context": "2.6.0",        # mindspore.device_context.*
    "runtime": "2.5.0",               # mindspore.runtime.*
    "set_init_step": "after 2.0.0",   # Dataset.set_init_step: absent in 2.0.0, no doc page (release unknown)
}

# MindSpore release -> the CANN release it is built for (vendors' compatibility tables)
KNOWN_GOOD_CANN = {
    "2.3.0": "8.0.RC2",
    "2.4.10": "8.0.0",
    "2.6.0": "8.2.RC1",
    "2.7.1": "8.3.RC1",
    "2.7.2": "8.5.0",
}

# MindSpore versions whose CPU convolutions are ~100x slower (shared/FACTS.md): fine on Ascend/GPU
SLOW_ON_CPU = ("2.9", "2.10")


def version_tuple(version: str) -> Tuple[int, ...]:
    """'2.7.1.post1' -> (2, 7, 1); '8.0.RC2' -> (8, 0)."""
    parts = []
    for p in version.split("."):
        if not p.isdigit():
            break
        parts.append(int(p))
    return tuple(parts)


def set_device(target: str) -> None:
    """The device for this process: `mindspore.set_device` from 2.5, `set_context(device_target=)` before."""
    import mindspore as ms
    if hasattr(ms, "set_device"):
        ms.set_device(target)
    else:
        ms.set_context(device_target=target)


def set_jit_level(cell, level: Optional[str]) -> None:
    """Compiles `cell` at graph level `level` (O0, O1, O2) through `Cell.set_jit_config(JitConfig(...))`,
    the per-network API of every supported version (`set_context(jit_config=...)` is deprecated in 2.7);
    None leaves MindSpore's default for the device. Set once, before the first call."""
    if level is None:
        return
    import mindspore as ms
    cell.set_jit_config(ms.JitConfig(jit_level=level))


def jit_level_of(cell) -> str:
    """The level `cell` compiles at: its own JitConfig's, or 'default' (MindSpore chooses per device)."""
    return (getattr(cell, "jit_config_dict", None) or {}).get("jit_level") or "default"


def resume_pipeline_at(dataset, step: int) -> bool:
    """Starts `dataset` at global step `step` (a resumed run sees the same epochs' order). False where
    MindSpore lacks Dataset.set_init_step (added after 2.0.0): the pipeline then starts from epoch 1's
    order, the run still trains correctly but not on an uninterrupted run's sequence."""
    if not hasattr(dataset, "set_init_step"):
        return False
    dataset.set_init_step(step)
    return True


def fix_worker_pool_teardown() -> bool:
    """Lets a dataset's Python worker pool shut down without waiting 5 s. MindSpore 2.7.2's
    `_PythonMultiprocessing._abort_monitor` tells the pool's clean process to quit only `if hasattr(self,
    'eof')`, an attribute the class no longer has (it became `eof_workers` / `eof_clean_process`), so the
    quit event is never set: every teardown waits out `cleaning_process.join(timeout=5)` and then kills
    the clean process, 5 s per pool (a training pipeline with mixup in worker processes has two), each time
    an iterator with `python_multiprocessing` ends (the end of training, every evaluation's pipeline).
    The class attribute makes that check true, so the event is set and the clean process returns within
    its 0.1 s poll, as MindSpore intends. Applied only where the check is in the source; True if applied."""
    import inspect
    try:
        from mindspore.dataset.engine.datasets import _PythonMultiprocessing as pool
        source = inspect.getsource(pool._abort_monitor)
    except (ImportError, AttributeError, OSError, TypeError):
        return False
    if hasattr(pool, "eof") or "hasattr(self, 'eof')" not in source:
        return False
    pool.eof = True
    return True


def python_supported(info=sys.version_info) -> bool:
    return PYTHON_RANGE[0] <= tuple(info[:2]) <= PYTHON_RANGE[1]


def mindspore_supported(version: str) -> bool:
    v = version_tuple(version)
    return version_tuple(MINDSPORE_FLOOR) <= v and v[:2] <= version_tuple(MINDSPORE_CEILING)


def cann_for(mindspore_version: str) -> Optional[str]:
    """The CANN release a MindSpore release is built for, if it is in the table (2.7.1.post1 -> 2.7.1's)."""
    release = version_tuple(mindspore_version)[:3]
    return next((cann for ms, cann in KNOWN_GOOD_CANN.items() if version_tuple(ms) == release), None)


def mindspore_for(cann_version: str) -> Optional[str]:
    for ms_version, cann in KNOWN_GOOD_CANN.items():
        if cann.lower() == cann_version.lower():
            return ms_version
    return None


def parse_cann_info(text: str) -> Optional[str]:
    """The `version=` field of CANN's ascend_toolkit_install.info."""
    m = re.search(r"^version=(\S+)", text, re.M)
    return m.group(1) if m else None


def cann_pair_verdict(mindspore_version: str, cann_version: str) -> Dict:
    """{'ok': True/False/None, 'message': ...}: None when the pair is not in the table either way."""
    want = cann_for(mindspore_version)
    if want is None:
        return {"ok": None, "message": f"MindSpore {mindspore_version} is not in the known-good table "
                                       f"({', '.join(f'{m} - CANN {c}' for m, c in KNOWN_GOOD_CANN.items())})"}
    if want.lower() == cann_version.lower():
        return {"ok": True, "message": f"MindSpore {mindspore_version} is built for CANN {cann_version}"}
    fix = mindspore_for(cann_version)
    return {"ok": False,
            "message": f"MindSpore {mindspore_version} is built for CANN {want}, this machine has CANN {cann_version}: "
                       + (f"install mindspore=={fix} (built for CANN {cann_version})" if fix else
                          f"install the MindSpore release built for CANN {cann_version} (see the vendor's table)")
                       + f", or move to CANN {want}"}


def set_device_id(target: str, device_id: int) -> None:
    """This process's Ascend/GPU device number (nothing on CPU): `mindspore.set_device(target, device_id)` from
    2.5, `set_context(device_id=)` before. From 2.5 the first set_device call fixes the id, and
    `set_device(target)` without one (engine.setup_context) already fixed the default; the id then goes
    through set_context, which MindSpore still honours until the device starts. Nothing to do where
    MindSpore already holds this id (it reads DEVICE_ID, which mpirun's local rank sets, at start)."""
    import mindspore as ms
    if target not in ("Ascend", "GPU") or ms.get_context("device_id") == device_id:
        return
    if hasattr(ms, "set_device"):
        try:
            ms.set_device(target, device_id)
            return
        except RuntimeError:  # "The 'mindspore.set_device' can not be modified": set without an id before
            pass
    ms.set_context(device_id=device_id)
