import json
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.ray_local import LOOPBACK_ENV  # noqa: E402 (needs ROOT on sys.path)
from idx_data import synthetic_images, write_idx  # noqa: E402,F401 (the tests import them from here)

# offline; a Ray driver (describe/embed --engine ray) reaches the tests' local cluster on loopback only
CLI_ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GLOG_v="3", PYTHONPATH=str(ROOT),
               **LOOPBACK_ENV)


def _checked(args, proc, check):
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-6000:]}")
    return proc


def run_cli(*args, check=True, timeout=900):
    """Runs `python -m ...` in its own process (torch and mindspore never share one)."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=CLI_ENV, capture_output=True, text=True,
                          timeout=timeout)
    return _checked(args, proc, check)


def run_cli_concurrently(*commands, timeout=900):
    """Runs several commands (argument tuples) at once, one process each (graph compilation is mostly
    single-threaded, so two processes use both cores); returns their CompletedProcess objects."""
    procs = [subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=CLI_ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args in commands]
    done = []
    for args, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=timeout)
        done.append(_checked(args, subprocess.CompletedProcess(args, proc.returncode, out, err), True))
    return done


def simple_cnn_config(folder: Path, packed: Path, name: str, **keys) -> Path:
    """folder/NAME.yaml: a width-8 simple_cnn on `packed` (80 training images: 5 steps of 16, 2 epochs),
    writing to folder/NAME; `keys` override (model_kwargs={"width": 4}, stop_at_epoch=1, ...)."""
    import yaml
    cfg = {"data_dir": str(packed / "data"), "output_dir": str(folder / name), "model": "simple_cnn",
           "model_kwargs": {"width": 8}, "batch_size": 16, "eval_batch_size": 40, "epoch_size": 2,
           "warmup_epochs": 0, "lr": 0.05, **keys}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def unallocated_weights(model: str):
    """A context in which `model` is built for its shapes and names only: its weights left unallocated, or
    for ConvNeXt, whose classifier mindcv scales at build (head_init_scale needs the weights), allocated
    but not drawn (MindSpore's random fills skipped: 6 of ConvNeXt-B's 8 s build here)."""
    from unittest import mock
    from mindspore.common import initializer
    from mindspore.nn.utils import no_init_parameters
    if not model.startswith("convnext"):
        return no_init_parameters()
    patches = [mock.patch.object(initializer, fill, lambda seed, arr, *args: None)
               for fill in ("_truncated_normal", "_random_uniform", "_random_normal")]
    stack = ExitStack()
    for patch in patches:
        stack.enter_context(patch)
    return stack


# The long tests, each its own unit of work under `make test` (pytest -n 3 --dist loadfile), spread over the
# workers and run first so that none of them starts last; every other test stays with its file (module
# fixtures built once; the msrun and Ray tests take free ports and their own temporary folders)
SPREAD = ("tests/test_models.py::test_every_backbone_trains_one_step_in_graph_mode_and_exports_mindir[",
          "tests/test_config.py::test_every_shipped_config_builds_and_steps[")


def _spread(nodeid: str) -> bool:
    return nodeid.startswith(SPREAD)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not _spread(item.nodeid))  # stable: the rest keep their order


def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile with the SPREAD tests as units of their own (xdist's loadgroup would say it with marks,
    but pytest 9.2 no longer reads the node id xdist 3.8 rewrites for it: every test became its own unit)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileOrSpreadScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if _spread(nodeid) else nodeid.split("::", 1)[0]

    config.option.loadscopereorder = False  # deal in collection order (xdist's default puts the largest files first)
    return FileOrSpreadScheduling(config, log)


@pytest.fixture(autouse=True)
def _ms_mode(request):
    """The MindSpore mode a test module declares (MS_MODE), set around each of its tests: a module-level
    set_context runs at collection, where the last module imported wins in every worker, and a test that
    switches modes must not leave its mode to the next file's tests."""
    mode = getattr(request.module, "MS_MODE", None)
    if mode is None:
        yield
        return
    import mindspore as ms
    before = ms.get_context("mode")
    ms.set_context(mode=mode)
    yield
    ms.set_context(mode=before)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A session fixture's folder, built by the first test worker that asks and read by all of them
    (pytest-xdist's recipe: a lock beside the workers' temporary folders; each worker built its own
    before, 3 times the CPU). A build that fails leaves no mark, so the next worker that asks builds again.
    The tests only read these folders: a test that writes makes its own copy."""
    import fcntl
    import shutil
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def _write_idx_root(root: Path):
    for prefix, n, seed in (("train", 96, 0), ("t10k", 40, 1)):
        images, labels = synthetic_images(n, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)


@pytest.fixture(scope="session")
def idx_root(tmp_path_factory) -> Path:
    """A Fashion-MNIST-shaped idx dataset: 96 train and 40 test images, written in the test."""
    return built_once(tmp_path_factory, "fmnist", _write_idx_root)


@pytest.fixture(scope="session")
def packed(idx_root, tmp_path_factory):
    """80 of idx_root's training images described (template), embedded and packed with its 40 test images."""
    def build(d):
        run_cli("-m", "export", "describe", "--source", "fashion-mnist", "--root", idx_root, "--limit", 80,
                "--out", d / "desc.jsonl")
        run_cli("-m", "export", "embed", "--descriptions", d / "desc.jsonl", "--out", d / "emb", "--batch-size", 32)
        run_cli("-m", "export", "pack", "--source", "fashion-mnist", "--root", idx_root, "--descriptions",
                d / "desc.jsonl", "--embeddings", d / "emb", "--out", d / "data")
    return built_once(tmp_path_factory, "pipeline", build)


@pytest.fixture(scope="session")
def trained(packed, tmp_path_factory):
    """One epoch of a width-8 ResNet-18 on `packed`, exported: {cfg, run, deploy (prefix)}."""
    def build(d):
        cfg = d / "tiny.yaml"
        cfg.write_text("data_dir: {}\noutput_dir: {}\nmodel_kwargs: {{width: 8}}\nbatch_size: 16\n"
                       "eval_batch_size: 16\nepoch_size: 1\nwarmup_epochs: 0\n".format(packed / "data", d / "run"))
        run_cli("-m", "ms_gpt4image", "train", "-c", cfg)
        export = run_cli("-m", "ms_gpt4image", "export", "-c", cfg, "--ckpt", d / "run" / "last.ckpt",
                         "--out", d / "deploy" / "net")
        (d / "export.json").write_text(export.stdout)
    d = built_once(tmp_path_factory, "trained", build)
    return {"cfg": d / "tiny.yaml", "run": d / "run", "deploy": d / "deploy" / "net",
            "export": json.loads((d / "export.json").read_text())}
