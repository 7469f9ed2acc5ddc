"""Every registered backbone, the projector and the GPT4Image net on tiny inputs."""
import numpy as np
import pytest

import mindspore as ms

from ms_gpt4image.gpt4image import GPT4ImageNet, Projector
from ms_gpt4image.models import create_backbone, list_backbones

MS_MODE = ms.PYNATIVE_MODE  # set around each test by conftest._ms_mode
# published parameter counts (millions) at 1000 classes, 224 px: torchvision / DeiT / ConvNeXt papers
PUBLISHED_M = {"resnet18": 11.7, "resnet50": 25.6, "deit_small": 22.1, "deit_base": 86.6,
               "convnext_tiny": 28.6, "convnext_small": 50.2, "convnext_base": 88.6,
               "resnet18_cifar": 11.2}  # CIFAR ResNet-18 at 10 classes (He et al. variant)


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_parameter_counts_match_published(name):
    from conftest import unallocated_weights
    num_classes = 10 if name == "resnet18_cifar" else 1000
    with unallocated_weights(name):
        n = sum(p.size for p in create_backbone(name, num_classes=num_classes).trainable_params()) / 1e6
    assert round(n, 1) == PUBLISHED_M[name], f"{name}: {n:.3f}M"


# Hiera paper Table 2 / the official model zoo, at 1000 classes and 224 px
HIERA_PUBLISHED_M = {"hiera_tiny_224": 27.91, "hiera_small_224": 35.01, "hiera_base_224": 51.52,
                     "hiera_base_plus_224": 69.90, "hiera_large_224": 213.74, "hiera_huge_224": 672.78}


@pytest.mark.parametrize("name", sorted(HIERA_PUBLISHED_M))
def test_hiera_parameter_counts_match_published(name):
    """Built without allocating the weights (no_init_parameters keeps them lazy): Hiera-H has 673M."""
    from mindspore.nn.utils import no_init_parameters
    with no_init_parameters():
        net = create_backbone(name, num_classes=1000)
    assert all(p.has_init for p in net.trainable_params())  # nothing was allocated
    n = sum(p.size for p in net.trainable_params()) / 1e6
    assert round(n, 2) == HIERA_PUBLISHED_M[name], f"{name}: {n:.4f}M"


def test_hiera_refuses_sizes_it_cannot_tile():
    with pytest.raises(ValueError, match="multiple of 32"):
        create_backbone("hiera_tiny_224", num_classes=10, image_size=40)


def test_unknown_backbone_names_the_choices():
    with pytest.raises(KeyError, match="resnet18_cifar"):
        create_backbone("resnet19", num_classes=10)


@pytest.mark.parametrize("kind,bn", [("linear", True), ("mlp", True), ("mlp", False)])
def test_projector_shapes(kind, bn):
    proj = Projector(64, 384, kind, mlp_bn=bn)
    proj.set_train(True)
    out = proj(ms.Tensor(np.ones((4, 64), np.float32)))
    assert out.shape == (4, 384)
    shapes = [tuple(p.shape) for p in proj.trainable_params()]
    if kind == "linear":
        assert shapes == [(384, 64)]  # the paper's W: k x d, no bias
    else:
        assert shapes[0] == (768, 64) and shapes[-2:] == [(384, 768), (384,)]
        # with BN: BN's gamma/beta follow a bias-free Linear; without (DeiT): the Linear has a bias
        assert shapes[1:-2] == ([(768,), (768,)] if bn else [(768,)])


def test_gpt4image_net_outputs_and_deploy_net():
    backbone = create_backbone("resnet18_cifar", num_classes=10, width=8)
    net = GPT4ImageNet(backbone, text_dim=384)
    net.set_train(False)
    x = ms.Tensor(np.zeros((3, 3, 28, 28), np.float32))
    logits, proj = net(x)
    assert logits.shape == (3, 10) and proj.shape == (3, 384)
    deploy = net.deploy_net()
    assert not any("projector" in p.name for p in deploy.get_parameters())
    np.testing.assert_allclose(deploy(x).asnumpy(), logits.asnumpy(), rtol=1e-6)


def test_init_from_a_mindcv_imagenet_checkpoint(tmp_path):
    """A plain mindcv checkpoint (1000 classes, optionally EMA-prefixed) initialises our 10-class
    backbone: classifier skipped and reported, everything else loaded."""
    from mindcv.models import create_model
    from ms_gpt4image.checkpoint import load_backbone

    released = create_model("resnet18", num_classes=1000)
    ms.save_checkpoint(released, str(tmp_path / "plain.ckpt"))
    ms.save_checkpoint([{"name": "ema." + p.name, "data": p} for p in released.get_parameters()]
                       + [{"name": "global_step", "data": ms.Tensor(np.array([5], np.int32))}],
                       str(tmp_path / "ema.ckpt"))
    for ckpt in ("plain.ckpt", "ema.ckpt"):
        net = create_backbone("resnet18", num_classes=10)
        report = load_backbone(net, tmp_path / ckpt, strict=False)
        assert sorted(report["shape_mismatch"]) == ["model.classifier.bias", "model.classifier.weight"]
        assert sorted(report["missing"]) == ["model.classifier.bias", "model.classifier.weight"]
        np.testing.assert_array_equal(net.model.conv1.weight.asnumpy(), released.conv1.weight.asnumpy())
        np.testing.assert_array_equal(net.model.layer4[1].bn2.moving_mean.asnumpy(),
                                      released.layer4[1].bn2.moving_mean.asnumpy())
    with pytest.raises(ValueError, match="shape mismatch"):
        load_backbone(create_backbone("resnet18", num_classes=10), tmp_path / "plain.ckpt", strict=True)


GRAPH_CHUNKS = 4  # of the backbones, one process each, spread over the test workers (conftest.SPREAD)


@pytest.mark.parametrize("chunk", range(GRAPH_CHUNKS))
def test_every_backbone_trains_one_step_in_graph_mode_and_exports_mindir(chunk):
    """Every GRAPH_CHUNKS-th backbone from `chunk` on, in its own process (tests/graph_step.py): one
    graph-mode training step; then in eval mode its feature and logits (forward_head(feature) = the
    logits; eagerly, in PyNative) and its MindIR export, reloaded."""
    import json
    from conftest import ROOT, run_cli
    names = list_backbones()[chunk::GRAPH_CHUNKS]
    rows = {r["backbone"]: r for r in map(json.loads, run_cli(ROOT / "tests" / "graph_step.py", *names)
                                          .stdout.strip().splitlines())}
    assert sorted(rows) == sorted(names)
    for name, r in rows.items():
        # the eval forward (feature -> head = the logits), in the process that built the backbone once
        assert r["feature_shape"] == [4, r["num_features"]] and r["logits_shape"] == [4, 10], (name, r)
        assert r["head_max_abs_diff"] < 1e-5, (name, r["head_max_abs_diff"])
        assert all(np.isfinite(r["losses"])), name
        assert r["mindir_max_abs_diff"] < 1e-5, (name, r["mindir_max_abs_diff"])  # the reloaded MindIR
        # the first and last layers and the projector moved; ConvNeXt's layer scale (1e-6 at init) makes
        # some block updates too small to show in float32, hence "most", not "all", of the rest
        for must in (r["params"][0], r["params"][-1]):
            assert must in r["changed"], (name, must)
        assert any(n.startswith("backbone.") and ("classifier" in n or "head" in n) for n in r["changed"]), name
        assert len(r["changed"]) >= 0.8 * len(r["params"]), (name, len(r["changed"]), len(r["params"]))
