"""`train` (mindspore.train.Model + callbacks) against a bare Python loop over the same pipeline and
train step: per-epoch losses and top-1 must agree, so the loop itself changes nothing.

  python tests/loop_parity.py CONFIG OUT_JSON
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ms_gpt4image.config import load_config  # noqa: E402
from ms_gpt4image.data import create_dataset, load_manifest  # noqa: E402
from ms_gpt4image.engine import evaluate, setup_context  # noqa: E402
from ms_gpt4image.train import build_training, train  # noqa: E402


def bare_loop(cfg):
    setup_context(cfg)
    train_ds, _ = create_dataset(cfg, "train")
    eval_ds, _ = create_dataset(cfg, "eval")
    net, step, _ = build_training(cfg, train_ds.get_dataset_size(), load_manifest(cfg["data_dir"]))
    records = []
    it = train_ds.create_tuple_iterator(num_epochs=cfg["epoch_size"])
    for epoch in range(cfg["epoch_size"]):
        step.set_train(True)
        for batch in it:
            step(*batch)
        records.append({**step.read_log(), "top1": evaluate(net.backbone, eval_ds)["top1"]})
    return records


def main():
    cfg = load_config(sys.argv[1])
    train(cfg)
    model = [json.loads(l) for l in (Path(cfg["output_dir"]) / "log.jsonl").read_text().splitlines()]
    Path(sys.argv[2]).write_text(json.dumps({"model": model, "bare": bare_loop(cfg)}))


if __name__ == "__main__":
    main()
