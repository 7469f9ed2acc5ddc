"""Alignment losses against NumPy computations of the paper's formulas on fixed inputs."""
import numpy as np
import pytest

import mindspore as ms

from ms_gpt4image.losses import AlignLoss, GPT4ImageLoss

MS_MODE = ms.PYNATIVE_MODE  # set around each test by conftest._ms_mode


def _inputs(b=6, k=8, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(b, k)).astype(np.float32)
    t = rng.normal(size=(b, k)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return z, t


def _log_softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def numpy_infonce(z, t, tau, normalize):
    """Eq. 2: -log( exp(t_i . z_i / tau) / sum_j exp(t_j . z_i / tau) ), mean over i."""
    if normalize:
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(z)):
        scores = np.array([t[j] @ z[i] / tau for j in range(len(t))], dtype=np.float64)
        total += -(scores[i] - np.log(np.exp(scores).sum()))
    return total / len(z)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("tau", [0.5, 0.1, 1.5])
def test_infonce_matches_eq2(tau, normalize):
    z, t = _inputs()
    got = float(AlignLoss("infonce", tau, normalize)(ms.Tensor(z), ms.Tensor(t)).asnumpy())
    np.testing.assert_allclose(got, numpy_infonce(z, t, tau, normalize), rtol=1e-5, atol=1e-6)


def test_clip_is_symmetric_cross_entropy():
    z, t = _inputs()
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    logits = zn @ t.T / 0.2
    idx = np.arange(len(z))
    want = -0.5 * (_log_softmax(logits, 1)[idx, idx].mean() + _log_softmax(logits, 0)[idx, idx].mean())
    got = float(AlignLoss("clip", 0.2)(ms.Tensor(z), ms.Tensor(t)).asnumpy())
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_cosine_loss():
    z, t = _inputs()
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    want = (2 - 2 * (zn * t).sum(1)).mean()
    np.testing.assert_allclose(float(AlignLoss("cosine")(ms.Tensor(z), ms.Tensor(t)).asnumpy()), want, rtol=1e-5)


def test_infonce_prefers_aligned_pairs():
    _, t = _inputs()
    aligned = float(AlignLoss("infonce", 0.5)(ms.Tensor(t * 3), ms.Tensor(t)).asnumpy())
    shuffled = float(AlignLoss("infonce", 0.5)(ms.Tensor(t[::-1].copy()), ms.Tensor(t)).asnumpy())
    assert aligned < shuffled


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_total_is_ce_plus_lambda_align(lam):
    z, t = _inputs()
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 10)).astype(np.float32)
    y = rng.integers(0, 10, 6).astype(np.int32)
    total, ce, align = GPT4ImageLoss(lam, "infonce", 0.5)(ms.Tensor(logits), ms.Tensor(z), ms.Tensor(y), ms.Tensor(t))
    want_ce = -_log_softmax(logits.astype(np.float64), 1)[np.arange(6), y].mean()
    np.testing.assert_allclose(float(ce.asnumpy()), want_ce, rtol=1e-5)
    np.testing.assert_allclose(float(align.asnumpy()), numpy_infonce(z, t, 0.5, True), rtol=1e-5)
    np.testing.assert_allclose(float(total.asnumpy()), want_ce + lam * float(align.asnumpy()), rtol=1e-5)


def test_bad_loss_settings_are_rejected():
    with pytest.raises(ValueError, match="align.loss"):
        AlignLoss("triplet")
    with pytest.raises(ValueError, match="tau"):
        AlignLoss("infonce", tau=0)


@pytest.mark.parametrize("tau", [0.5, 0.2])
def test_losses_and_gradients_match_pytorch(tau, tmp_path):
    """The PyTorch computation runs in its own process (torch and mindspore never share one)."""
    from conftest import ROOT, run_cli
    from ms_gpt4image.gpt4image import Projector

    rng = np.random.default_rng(3)
    f = rng.normal(size=(8, 32)).astype(np.float32)
    w = (0.1 * rng.normal(size=(16, 32))).astype(np.float32)
    _, t = _inputs(8, 16, seed=4)
    np.savez(tmp_path / "in.npz", f=f, w=w, t=t, tau=tau)
    run_cli(ROOT / "tests" / "torch_losses.py", tmp_path / "in.npz", tmp_path / "out.npz")
    ref = np.load(tmp_path / "out.npz")
    for kind in ("infonce", "clip", "cosine"):
        proj = Projector(32, 16, "linear")
        proj.net[0].weight.set_data(ms.Tensor(w))
        loss = AlignLoss(kind, tau)

        def fn(x, txt):
            return loss(proj(x), txt)

        value, grads = ms.value_and_grad(fn, None, proj.trainable_params())(ms.Tensor(f), ms.Tensor(t))
        np.testing.assert_allclose(float(value.asnumpy()), float(ref[kind]), rtol=1e-5, err_msg=kind)
        np.testing.assert_allclose(grads[0].asnumpy(), ref[f"grad_{kind}"], rtol=1e-4, atol=1e-6, err_msg=kind)
