"""`jit_level` (graph compilation level): a config key passed to the train step and the evaluation net
through compat.set_jit_level (Cell.set_jit_config with a JitConfig, the per-network API of every
supported MindSpore); null leaves MindSpore's default for the device; O2 (CANN's GraphEngine) is refused
where it cannot run."""
import pytest

import mindspore as ms

from ms_gpt4image.compat import jit_level_of
from ms_gpt4image.config import ConfigError, load_config
from ms_gpt4image.train import build_eval_net, build_training

MANIFEST = {"num_classes": 10, "embedding": {"dim": 16}}


@pytest.mark.parametrize("level", [None, "O0", "O1"])
def test_the_train_step_and_the_eval_net_compile_at_the_configured_level(level):
    cfg = load_config(overrides=["model=simple_cnn", "model_kwargs={width: 4}"] +
                      ([f"jit_level={level}"] if level else []))
    _, step, _ = build_training(cfg, 4, MANIFEST)
    eval_net = build_eval_net(cfg, 10)
    want = level or "default"
    assert jit_level_of(step) == jit_level_of(eval_net) == want
    if level:
        assert step.jit_config_dict["jit_level"] == level


def test_o2_is_refused_off_ascend_and_in_pynative():
    with pytest.raises(ConfigError, match="jit_level = O2 .* needs device_target: Ascend and mode: graph"):
        load_config(overrides=["jit_level=O2"])
    with pytest.raises(ConfigError, match="not Ascend in pynative mode"):
        load_config(overrides=["jit_level=O2", "device_target=Ascend", "mode=pynative"])
    assert load_config(overrides=["jit_level=O2", "device_target=Ascend"])["jit_level"] == "O2"
    with pytest.raises(ConfigError, match="jit_level"):
        load_config(overrides=["jit_level=O3"])


def test_a_graph_mode_step_runs_at_o1():
    import numpy as np
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        cfg = load_config(overrides=["model=simple_cnn", "model_kwargs={width: 4}", "jit_level=O1"])
        _, step, _ = build_training(cfg, 4, MANIFEST)
        step.set_train(True)
        rng = np.random.default_rng(0)
        t = rng.normal(size=(4, 16)).astype(np.float32)
        out = step(ms.Tensor(rng.normal(size=(4, 3, 32, 32)).astype(np.float32)), ms.Tensor(np.arange(4, dtype=np.int32)),
                   ms.Tensor(t / np.linalg.norm(t, axis=1, keepdims=True)))
        assert np.isfinite(float(out[0].asnumpy()))
    finally:
        ms.set_context(mode=mode)
