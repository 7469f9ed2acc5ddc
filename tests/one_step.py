"""Builds each given config's training setup on tiny data and runs one optimisation step.

  python tests/one_step.py DATA_DIR CONFIG [CONFIG ...] [KEY=VALUE ...]

The config is used as shipped except for what a CPU smoke run must change: data_dir, image size 32,
batch 4, device CPU, amp O0 (the loss-scale type is kept), no pretrained weights, PyNative mode (graph mode is covered per
backbone by tests/test_models.py). Prints one JSON line per config: the three losses after the step.
"""
import gc
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mindspore as ms  # noqa: E402

from ms_gpt4image.config import load_config  # noqa: E402
from ms_gpt4image.data import create_dataset, load_manifest  # noqa: E402
from ms_gpt4image.engine import setup_context  # noqa: E402
from ms_gpt4image.train import build_training  # noqa: E402

SMOKE = ["image_size=32", "batch_size=4", "eval_batch_size=8", "device_target=CPU", "amp_level=O0",
         "mode=pynative", "num_parallel_workers=1", "epoch_size=2", "warmup_epochs=1",
         "pretrained_ckpt=null"]  # released weights are not here (the Hiera recipes start from MAE checkpoints)


def main():
    data_dir = sys.argv[1]
    configs = [a for a in sys.argv[2:] if "=" not in a]
    overrides = [a for a in sys.argv[2:] if "=" in a]  # applied to every config, after SMOKE
    for path in configs:
        cfg = load_config(path, SMOKE + [f"data_dir={data_dir}"] + overrides)
        setup_context(cfg)
        data, _ = create_dataset(cfg, "train")
        net, step, _ = build_training(cfg, data.get_dataset_size(), load_manifest(data_dir))
        step.set_train(True)
        image, label, text = next(data.create_tuple_iterator(num_epochs=1))
        losses = [float(v.asnumpy()) for v in step(image, label, text)]
        assert all(np.isfinite(losses)), (path, losses)
        print(json.dumps({"config": path, "label_shape": list(label.shape), "losses": losses}), flush=True)
        del net, step, data, image, label, text
        gc.collect()  # ConvNeXt-B / DeiT-B with optimizer state and EMA: do not hold several at once


if __name__ == "__main__":
    main()
