from pathlib import Path

import pytest

from ms_gpt4image.config import load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_shipped_configs_parse(path):
    cfg = load_config(str(path))
    assert cfg["align"]["tau"] > 0
    from ms_gpt4image.models import list_backbones
    assert cfg["model"] in list_backbones()


def _structure(cfg):
    """What changes the built graph or pipeline (not lambda or tau values, paths, or drop-path rates)."""
    keys = ("model", "transforms", "opt", "ema", "loss_scale_type", "auto_augment", "weight_decay_filter", "layer_decay")
    return tuple(str(cfg[k]) for k in keys) + (cfg["mixup"] > 0, cfg["align"]["loss"], cfg["align"]["projector"],
                                              cfg["align"]["mlp_bn"])


def _one_per_structure():
    chosen = {}
    for path in CONFIGS:
        chosen.setdefault(_structure(load_config(str(path))), path)
    return sorted(chosen.values())


@pytest.mark.parametrize("path", _one_per_structure(), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_config_builds_and_steps(path, packed):
    """One step on tiny data for each distinct structure among the shipped configs (tests/one_step.py),
    each in its own process: several ImageNet-size models in one process exhaust memory."""
    import json
    from conftest import ROOT, run_cli
    out = run_cli(ROOT / "tests" / "one_step.py", packed / "data", path).stdout
    (r,) = [json.loads(l) for l in out.strip().splitlines()]
    cfg = load_config(str(path))
    mixing = cfg["mixup"] > 0 or cfg["cutmix"] > 0
    assert r["label_shape"] == ([4, 10] if mixing else [4])  # soft targets under mixup/cutmix
