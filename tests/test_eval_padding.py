"""One evaluation graph: `evaluate` (training callback, `evaluate` CLI) and `predict` hand the net one
input shape for the whole set (the ragged last batch is padded, its padding's outputs dropped), with
top-1/top-5 and counts unchanged: against a per-sample numpy reference, over 2 ranks' slices, and
through deploy.run_evaluate."""
import io

import numpy as np
import pytest
import mindspore as ms

from ms_gpt4image import deploy
from ms_gpt4image.checkpoint import save_deploy
from ms_gpt4image.config import load_config
from ms_gpt4image.data import create_dataset, load_manifest
from ms_gpt4image.engine import evaluate, pad_rows
from ms_gpt4image.models import create_backbone
from ms_gpt4image.predict import run_predict

MS_MODE = ms.PYNATIVE_MODE  # set around each test by conftest._ms_mode


class ShapeRecorder:
    """The net, recording the batch shape of every call (in graph mode one shape = one compile)."""

    def __init__(self, net):
        self.net, self.shapes = net, []

    def set_train(self, mode=True):
        self.net.set_train(mode)
        return self

    def __call__(self, image):
        self.shapes.append(tuple(image.shape))
        return self.net(image)


def config(packed, eval_batch_size):
    return load_config(None, [f"data_dir={packed / 'data'}", "model=simple_cnn", "model_kwargs={width: 8}",
                              f"eval_batch_size={eval_batch_size}", "mode=pynative", "num_parallel_workers=1"])


@pytest.fixture(scope="module")
def net(packed):
    ms.set_seed(0)
    manifest = load_manifest(packed / "data")
    net = create_backbone("simple_cnn", num_classes=manifest["num_classes"], in_channels=3, width=8)
    net.set_train(False)
    return net


@pytest.fixture(scope="module")
def reference(packed, net):
    """(correct top-1, correct top-5, samples) with the net run on one image at a time, ranked in numpy."""
    data, n = create_dataset(config(packed, 1), "eval")
    c1 = c5 = 0
    for image, label in data.create_tuple_iterator(num_epochs=1, output_numpy=True):
        logits = net(ms.Tensor(image)).asnumpy()[0]
        top5 = np.argsort(-logits)[:5]
        c1, c5 = c1 + int(top5[0] == label[0]), c5 + int(label[0] in top5)
    return c1, c5, n


def counts(result):
    n = result["count"]
    return round(result["top1"] * n / 100), round(result["top5"] * n / 100), n


def test_pad_rows_repeats_the_last_row():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert np.array_equal(pad_rows(x, 5), [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    assert pad_rows(x, 3) is x


@pytest.mark.parametrize("batch", [16, 64])  # 16: a ragged last batch; 64: a set smaller than one batch
def test_evaluate_calls_the_net_with_one_shape(packed, net, reference, batch):
    data, n = create_dataset(config(packed, batch), "eval")
    assert batch > n or n % batch, "the eval set must leave a ragged last batch"
    recorder = ShapeRecorder(net)
    result = evaluate(recorder, data)
    assert len(set(recorder.shapes)) == 1, recorder.shapes
    assert recorder.shapes[0][0] == min(batch, n) and len(recorder.shapes) == -(-n // batch)
    assert counts(result) == reference


def test_two_ranks_slices_sum_to_the_single_rank_result(packed, net, reference):
    cfg = config(packed, 7)
    totals = np.zeros(3, int)
    for rank in range(2):
        data, n = create_dataset(cfg, "eval", num_shards=2, shard_id=rank)
        assert n % 7, "each slice must leave a ragged last batch"
        recorder = ShapeRecorder(net)
        totals += counts(evaluate(recorder, data))
        assert set(recorder.shapes) == {recorder.shapes[0]} and recorder.shapes[0][0] == 7
    assert tuple(totals) == reference


def test_deploy_evaluate_one_shape(packed, net, reference, tmp_path, monkeypatch):
    ckpt = tmp_path / "net.ckpt"
    save_deploy(net, ckpt)
    recorders = []

    def recorded(*args, **kwargs):
        recorders.append(ShapeRecorder(build(*args, **kwargs)))
        return recorders[-1]

    build = deploy.build_deploy_net
    monkeypatch.setattr(deploy, "build_deploy_net", recorded)
    monkeypatch.setattr(deploy, "setup_context", lambda cfg: None)  # set_device once kernels ran would raise
    result = deploy.run_evaluate(config(packed, 16), ckpt)
    assert len(recorders) == 1 and set(recorders[0].shapes) == {recorders[0].shapes[0]}
    assert counts(result) == reference


def test_predict_calls_the_net_with_one_shape(packed, net, reference):
    spec = deploy.model_spec(config(packed, 16), load_manifest(packed / "data"))
    recorder = ShapeRecorder(net)
    result = run_predict(recorder, spec, data_dir=packed / "data", batch_size=16, stdout=io.StringIO())
    c1, c5, n = reference
    assert result["images"] == n and len(set(recorder.shapes)) == 1 and recorder.shapes[0][0] == min(16, n)
    assert (round(result["top1"] * n / 100), round(result["top5"] * n / 100)) == (c1, c5)
