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


def test_base_merges_mappings_but_replaces_model_kwargs(tmp_path):
    """A config for another model must not inherit its base's model_kwargs (a ResNet `width` would reach
    Hiera); the align block is still merged key by key."""
    (tmp_path / "base.yaml").write_text("model: resnet18_cifar\nmodel_kwargs: {width: 16}\nalign: {lambda: 0.5, tau: 0.2}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel: hiera_tiny_224\nmodel_kwargs: {drop_path_rate: 0.1}\n"
                                         "align: {lambda: 0.0}\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert cfg["model_kwargs"] == {"drop_path_rate": 0.1}
    assert cfg["align"]["lambda"] == 0.0 and cfg["align"]["tau"] == 0.2
    assert load_config(str(tmp_path / "base.yaml"), ["model_kwargs={depth: 1}"])["model_kwargs"] == {"depth": 1}
