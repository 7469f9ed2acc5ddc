"""Graph-mode train steps under each loss-scale type, with and without EMA, a non-finite gradient
injected at step 2 of 3 (tests/test_loss_scaling.py). Prints one JSON line per case: the steps, skips
and EMA updates the train step counted and the optimizer's step counter. MindSpore's compile
warnings go to stderr, which the test reads too."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mindspore as ms  # noqa: E402

from test_loss_scaling import SCALES, batch, build_step  # noqa: E402


def main():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    for kind in SCALES:
        for ema in (0.0, 0.9):
            net, step = build_step(kind, ema)
            for i in range(3):
                step(*batch(inject=i == 1))
            log = step.read_log()
            print(json.dumps({"kind": kind, "ema": ema, "steps": log["steps"], "skipped": log["skipped_steps"],
                              "optimizer_step": int(step.optimizer.global_step.asnumpy().reshape(-1)[0]),
                              "ema_updates": float(step.ema_updates.asnumpy()) if ema else None}), flush=True)


if __name__ == "__main__":
    main()
