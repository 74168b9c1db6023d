"""Can the model's ops be replayed as CUDA graphs, and what would that save the host? (one GPU)
    python benchmarks/measured/h100-2026-11-27b/graph_ops.py
For op-table points of `paper` and `deepseek-v3` (attention prefill and decode, one expert call): the host time
of issuing the call eagerly against one replay of it captured in a CUDA graph (`moe.model.graphs.Replays`), each
after a device synchronization, medians of REPEATS, and the device time of both (CUDA events)."""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import torch  # noqa: E402

from moe.model.graphs import EAGER, Replays  # noqa: E402
from moe.model.model import build_layer  # noqa: E402
from moe.model.optable import Grid, RuntimeOps, attention_calls, expert_calls  # noqa: E402
from real.op_points import preset_models  # noqa: E402

REPEATS = 20
dev = torch.device("cuda", 0)


def host_and_device(fn) -> tuple[float, float]:
    hs, ds = [], []
    for _ in range(REPEATS):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        t0 = time.perf_counter()
        fn()
        hs.append(time.perf_counter() - t0)
        b.record()
        torch.cuda.synchronize()
        ds.append(a.elapsed_time(b) / 1e3)
    return statistics.median(hs), statistics.median(ds)


print(f"graph_ops: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
print(f"{'model':12s} {'op':18s} {'T/R':>5s} {'S':>5s} {'eager host ms':>13s} {'replay host ms':>14s} "
      f"{'eager dev ms':>12s} {'replay dev ms':>13s}")
grid = Grid(tokens=(256,), rows=(256, 2048), prefill=((256, 256), (2048, 2048)), decode=((64, 2048),))
for model, _ in preset_models():
    two = model.model_copy(update={"layers": 2, "dense_layers": 1})
    with torch.inference_mode():
        dense = build_layer(two, 0, 0, device=dev)
        moe = build_layer(two, 0, 1, experts=list(range(4)), device=dev)
        calls = list(attention_calls(dense, model, grid, dev, 0)) + \
            [c[:4] for c in expert_calls(moe, model, grid, RuntimeOps(), dev, 0)]
        for op, t, s, call in calls:
            r = Replays(dev, 0)
            for _ in range(3):
                r.run("k", call)
            eager = host_and_device(call)
            if r.state["k"] == EAGER:
                print(f"{model.preset:12s} {op:18s} {t:5d} {s:5d} {eager[0] * 1e3:13.3f} {'not captured':>14s} "
                      f"{eager[1] * 1e3:12.3f}")
                continue
            replay = host_and_device(lambda r=r, call=call: r.run("k", call))
            print(f"{model.preset:12s} {op:18s} {t:5d} {s:5d} {eager[0] * 1e3:13.3f} {replay[0] * 1e3:14.3f} "
                  f"{eager[1] * 1e3:12.3f} {replay[1] * 1e3:13.3f}", flush=True)
    del dense, moe
    torch.cuda.empty_cache()
