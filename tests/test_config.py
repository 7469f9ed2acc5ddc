from pathlib import Path

import pytest

from ms_gpt4image.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    cfg = load_config(str(path))
    assert cfg["align"]["tau"] > 0


def test_baseline_inherits_everything_but_lambda():
    root = CONFIGS[0].parent
    a, b = load_config(str(root / "demo_fmnist.yaml")), load_config(str(root / "demo_fmnist_baseline.yaml"))
    assert b["align"]["lambda"] == 0 and a["align"]["lambda"] == 0.3
    diff = {k for k in a if a[k] != b[k]}
    assert diff == {"align", "output_dir"}


def test_unknown_keys_are_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("align:\n  lamda: 0.3\n")
    with pytest.raises(ConfigError, match="'align.lamda'"):
        load_config(str(p))
    p.write_text("epochs: 3\n")
    with pytest.raises(ConfigError, match="'epochs'"):
        load_config(str(p))


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["align.lambda=0", "model_kwargs={width: 8}", "hflip=false"])
    assert cfg["align"]["lambda"] == 0 and cfg["model_kwargs"] == {"width": 8} and cfg["hflip"] is False
    with pytest.raises(ConfigError, match="'align.taux'"):
        load_config(None, ["align.taux=1"])
