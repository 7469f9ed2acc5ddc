"""Guards on the CI and demo venv's pinned stack (requirements.txt; users get ranges from pyproject.toml, see
docs/compatibility.md). Not timings: those are in scripts/bench_train_step.py."""
import mindspore
import mindcv


def test_mindspore_pinned_below_2_9():
    # 2.9.0 / 2.10.0 run CPU convolutions ~100x slower (shared/FACTS.md)
    major, minor = (int(p) for p in mindspore.__version__.split(".")[:2])
    assert (major, minor) < (2, 9), mindspore.__version__


def test_mindcv_version():
    assert mindcv.__version__ == "0.3.0"
