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


SIZES = ("tiny", "small", "base", "base_plus", "large", "huge")


def _family_and_size(model: str):
    """convnext_base -> ("convnext", 2), hiera_tiny_224 -> ("hiera", 0); other names are their own family."""
    for rank, size in sorted(enumerate(SIZES), key=lambda s: -len(s[1])):
        for suffix in (f"_{size}", f"_{size}_224"):
            if model.endswith(suffix):
                return model[:-len(suffix)], rank
    return model, 0


def _structure(cfg):
    """What changes the built graph or pipeline: not lambda, tau or layer-decay values, paths, drop-path rates,
    or the size of a model family (ConvNeXt-T/S/B are one code path at other widths and depths; every
    registered backbone gets its own graph-mode step in tests/test_models.py, and every config's optimizer
    groups are built in tests/test_fidelity_schedule.py)."""
    keys = ("transforms", "opt", "ema", "loss_scale_type", "auto_augment", "weight_decay_filter")
    return (_family_and_size(cfg["model"])[0],) + tuple(str(cfg[k]) for k in keys) + (
        cfg["layer_decay"] is not None, cfg["mixup"] > 0, cfg["align"]["loss"], cfg["align"]["projector"],
        cfg["align"]["mlp_bn"])


def _stand_in(model: str) -> str:
    """The smallest registered backbone of `model`'s family (deit_base -> deit_small): what a config's step
    builds, as its family's other sizes are the same code path."""
    from ms_gpt4image.models import list_backbones
    family = _family_and_size(model)[0]
    return min((m for m in list_backbones() if _family_and_size(m)[0] == family), key=lambda m: _family_and_size(m)[1])


def _one_per_structure():
    """The config with the smallest model of each structure (the first by path among equals)."""
    chosen = {}
    for path in CONFIGS:
        cfg = load_config(str(path))
        key, size = _structure(cfg), _family_and_size(cfg["model"])[1]
        if key not in chosen or size < chosen[key][0]:
            chosen[key] = (size, path)
    return sorted(path for _, path in chosen.values())


def test_structures_group_configs_by_model_family():
    assert _family_and_size("convnext_base") == ("convnext", 2)
    assert _family_and_size("hiera_base_plus_224") == ("hiera", 3) and _family_and_size("hiera_tiny_224") == ("hiera", 0)
    assert _family_and_size("resnet18_cifar") == ("resnet18_cifar", 0) and _family_and_size("resnet50")[0] == "resnet50"
    chosen = [str(p.relative_to(CONFIG_DIR)) for p in _one_per_structure()]
    assert "imagenet_convnext_tiny.yaml" in chosen and "imagenet_hiera_tiny.yaml" in chosen  # the smallest stands in
    assert "imagenet_deit_base_authors.yaml" in chosen  # its own structure (CLIP loss, MLP projector without BN)
    assert _stand_in("deit_base") == "deit_small" and _stand_in("hiera_huge_224") == "hiera_tiny_224"
    assert _stand_in("resnet50") == "resnet50" and _stand_in("convnext_tiny") == "convnext_tiny"


@pytest.mark.parametrize("path", _one_per_structure(), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_config_builds_and_steps(path, packed):
    """One step on tiny data for each distinct structure among the shipped configs (tests/one_step.py),
    each in its own process: several ImageNet-size models in one process exhaust memory. The model is its
    family's smallest (DeiT-S for the DeiT-B config: a third of the step's time)."""
    import json
    from conftest import ROOT, run_cli
    cfg = load_config(str(path))
    out = run_cli(ROOT / "tests" / "one_step.py", packed / "data", path, f"model={_stand_in(cfg['model'])}").stdout
    (r,) = [json.loads(l) for l in out.strip().splitlines()]
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


@pytest.mark.parametrize("override, message", [
    ("lr=-0.1", "config key 'lr' = -0.1: must be a finite number > 0"),
    ("lr=.nan", "config key 'lr' = nan: must be a finite number > 0"),
    ("lr=abc", "config key 'lr' = 'abc': must be a finite number > 0"),
    ("epoch_size=0", "config key 'epoch_size' = 0: must be an integer >= 1"),
    ("epoch_size=2.5", "config key 'epoch_size' = 2.5: must be an integer >= 1"),
    ("image_size=-5", "config key 'image_size' = -5: must be an integer >= 1"),
    ("batch_size=[16, 32]", "config key 'batch_size' = [16, 32]: must be an integer >= 1"),
    ("seed=true", "config key 'seed' = True: must be an integer >= 0"),
    ("align.tau=0", "config key 'align.tau' = 0: must be a finite number > 0"),
    ("align.lambda=-1", "config key 'align.lambda' = -1: must be a finite number >= 0"),
    ("align.loss=triplet", "config key 'align.loss' = 'triplet': must be one of infonce, clip, cosine"),
    ("align=0.3", "config key 'align' must be a mapping, got 0.3"),
    ("model_kwargs=[1]", "config key 'model_kwargs' = [1]: must be a mapping"),
    ("mean=[0.5, 0.5]", "config key 'mean' = [0.5, 0.5]: must be a list of 3 finite numbers"),
    ("std=[0.5, 0, 0.5]", "config key 'std' = [0.5, 0, 0.5]: must be a list of 3 finite numbers > 0"),
    ("rrc_scale=[0.9, 0.1]", "rrc_scale = [0.9, 0.1]: the lower bound is above the upper one"),
    ("ema_decay=1", "config key 'ema_decay' = 1: must be a finite number > 0 and < 1"),
    ("crop_pct=1.5", "config key 'crop_pct' = 1.5: must be a finite number > 0 and <= 1"),
    ("opt=sgdd", "config key 'opt' = 'sgdd': must be one of sgd, momentum"),
    ("scheduler=cosine", "config key 'scheduler' = 'cosine': must be one of cosine_decay"),
    ("auto_augment=rand-m9", "config key 'auto_augment' = 'rand-m9': must be a mindcv policy name starting with"),
    ("num_classes=1", "config key 'num_classes' = 1: must be an integer >= 2 or null"),
    ("dataset_sink_mode=maybe", "config key 'dataset_sink_mode' = 'maybe': must be true or false or null"),
    ("warmup_epochs=11", "warmup_epochs = 11 is longer than epoch_size = 10"),
    ("stop_at_epoch=11", "stop_at_epoch = 11 is after the last epoch (epoch_size = 10)"),
    ("min_lr=0.5", "min_lr = 0.5 is above lr = 0.1"),
    ("batch_size=1", "batch_size = 1: contrastive alignment (align.loss infonce) needs batch_size >= 2"),
])
def test_values_that_cannot_work_are_refused_naming_key_value_and_what_is_allowed(override, message):
    from ms_gpt4image.config import ConfigError
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(message), str(e.value)


def test_numbers_are_read_as_their_keys_type(tmp_path):
    """PyYAML reads `1e-3` (no dot) as a string; an integer given to a float key becomes a float."""
    p = tmp_path / "c.yaml"
    p.write_text("lr: 1e-3\nweight_decay: 0\nalign: {tau: 1}\n")
    cfg = load_config(str(p))
    assert cfg["lr"] == 0.001 and isinstance(cfg["weight_decay"], float) and cfg["align"]["tau"] == 1.0
    assert load_config(None, ["align.lambda=0", "batch_size=1"])["batch_size"] == 1  # no alignment: no negatives


def test_a_bad_value_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    from conftest import run_cli
    p = run_cli("-m", "ms_gpt4image", "train", "-c", CONFIG_DIR / "demo_fmnist.yaml", "--set", "epoch_size=0",
                check=False)
    assert p.returncode == 2 and p.stderr.strip() == "error: config key 'epoch_size' = 0: must be an integer >= 1"
