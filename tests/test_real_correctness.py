"""The real backend's distributed output equals the single-process reference `forward`, and its measured token
matrix equals moe.traffic's: the emulator's checks (tests/test_emu_correctness.py: its cases and
tolerances) on the torch.distributed transport, both shard transports (`p2p`, `all_to_all`).

On CPUs the ranks are gloo processes started here (RANK/WORLD_SIZE/MASTER_* in the environment, as torchrun
sets them, without its agent: a second faster). Each transport runs twice: completions observed by the
host (gloo's own), and stream-ordered completions (NCCL's semantics: an operation counts as done once
issued and its data is visible only after `Transport.ready`), which checks that the runtime calls
`ready` before every read of a received buffer: a missing call reads a buffer gloo has not filled yet.
Every case also checks that all ranks issued their collectives in one order (`same_order`).
On GPUs (`-m gpu`) the same body runs on NCCL ranks under torchrun, the reference on the same GPU (same
FP8 GEMM path).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHILD_PYTHONPATH = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
"""Children import this checkout first, then whatever the parent could import."""
sys.path.insert(0, str(ROOT / "tests"))

from test_emu_correctness import BASE, FROB_TOL, LAYER_TOL, MAX_TOL, cases, layer_errors  # noqa: E402

REAL = {"warmup": 0, "repeats": 1, "timeout_s": 60.0}
VARIANTS = {"p2p/host": ("p2p", False), "all_to_all/host": ("all_to_all", False),
            "p2p/stream": ("p2p", True), "all_to_all/stream": ("all_to_all", True),
            "deferred/stream": ("all_to_all", True)}
"""Transport mode and stream-ordered completion of each variant (GPU ranks are always stream-ordered).
deferred: all_to_all behind the protocol of a device-split transport (`DeferredCounts`), which the
`nvshmem` mode is on GPUs: receives posted (the counts read) when the shards are computed; here the counts
are sent beside the rows, where nvshmem derives them from the rows (`emu.dispatch.counts_of_rows`)."""
GPU_VARIANTS = {"nvshmem/stream": ("nvshmem", True)}
"""GPUs with NVSHMEM only."""
QUICK_CASES = ("replicate_hot+replicas", "layer-pipeline/chunks")
"""The default test runs one of them per variant, in turn (replicas and capacity; pipelined chunks)."""


def launch_local(ranks: int, argv: list[str], timeout_s: float) -> tuple[list[int], str, str]:
    """`ranks` processes of `python argv...` joined as one torch.distributed job on this host (the
    variables torchrun would set); every process is killed at the deadline. Returns exit codes, stdout of
    rank 0 and everyone's stderr."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(ranks):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(r),
               "LOCAL_WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "PYTHONPATH": CHILD_PYTHONPATH, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + timeout_s
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            outs.append(p.communicate())
    return [p.returncode for p in procs], outs[0][0], "".join(e for _, e in outs)


# ----------------------------------------------------------------------------------------- rank body
_MODELS: dict = {}


def model_for(s, experts, device):
    from moe.model.model import from_scenario

    key = (s.model, s.seed, experts, str(device))
    if key not in _MODELS:  # models are shared by the cases of one model (building dominates)
        _MODELS[key] = from_scenario(s, experts=experts, device=device)
    return _MODELS[key]


def check_case(tr, overrides: list[str]) -> dict:
    """Every routing pattern of the scenario on this job against the reference on this rank's tokens."""
    import torch
    import torch.distributed as dist

    from emu.job import inputs
    from emu.microbatch import full_caches
    from emu.plan import build_plan
    from moe.model.model import wire_dtypes
    from moe.spec import load_scenario
    from real.job import RealJob

    s = load_scenario({**BASE, "real": REAL}, overrides)
    plan = build_plan(s, tr.rank)
    held = tuple(plan.held_experts(tr.rank))
    held = None if held == tuple(range(s.model.experts)) else held
    job = RealJob(s, tr, plan=plan, model=model_for(s, held, tr.device))
    job.runtime.layer_outputs = {}
    ref_model = model_for(s, None, tr.device)  # every expert, one process
    worst, frob, layer_frob, traffic_ok, order_ok = 0.0, 0.0, 0.0, True, True
    for pattern in range(s.workload.steps):
        out_TD, stats = job.step(pattern, record=False)
        layer_frob = max(layer_frob, layer_errors(s, job, ref_model, pattern))
        rows = [None] * tr.size
        dist.all_gather_object(rows, stats.pair_rows_JR, group=tr.pg.objects)
        traffic_ok &= bool(np.array_equal(np.stack(rows, axis=1), job.plan.pair_tokens_PJGG[pattern]))
        logs = [None] * tr.size
        dist.all_gather_object(logs, tr.issue_log, group=tr.pg.objects)
        order_ok &= same_order(logs, tr.stream_ordered)
        x_TD = inputs(s, pattern, tr.rank, tr.size, tr.device)
        routing, keep = {}, {}
        for j, r in enumerate(job.plan.routing_PJ[pattern]):
            routing[s.model.dense_layers + j] = r.ids_TK
            keep[s.model.dense_layers + j] = torch.from_numpy(r.keep_TK).to(tr.device)
        with torch.inference_mode():
            ref_TD = ref_model(x_TD, full_caches(ref_model, job.layout, s.seed), routing=routing, keep=keep,
                               wire=wire_dtypes(s))
        diff = out_TD.float() - ref_TD.float()
        worst = max(worst, float(diff.abs().max() / ref_TD.float().abs().max()))
        frob = max(frob, float(diff.norm() / ref_TD.float().norm()))
    return {"max_err": worst, "frob_err": frob, "layer_frob_err": layer_frob, "traffic_ok": traffic_ok,
            "order_ok": order_ok}


def same_order(logs: list[list[tuple[str, int]]], stream_ordered: bool) -> bool:
    """Every rank issued its collectives in one order: all of them (stream-ordered completion, as on a
    GPU, where kernels of different communicators must not be launched in different orders), or those of
    each phase (host-observed completion: each phase has its own process group)."""
    if stream_ordered:
        return all(log == logs[0] for log in logs)
    phases = {p for log in logs for p, _ in log}
    return all([e for e in log if e[0] == p] == [e for e in logs[0] if e[0] == p] for log in logs for p in phases)


def check_cases(tr, variant: str, quick: bool) -> list[str]:
    """Every case on this job (quick: this variant's one); returns the failures, the same on every rank."""
    import torch.distributed as dist

    failures = []
    for label, overrides in cases(tr.size):
        if quick and label != QUICK_CASES[list(VARIANTS).index(variant) % len(QUICK_CASES)]:
            continue
        got = [None] * tr.size
        dist.all_gather_object(got, check_case(tr, overrides), group=tr.pg.objects)
        worst = max(g["max_err"] for g in got)
        frob = max(g["frob_err"] for g in got)
        layer = max(g["layer_frob_err"] for g in got)
        traffic = all(g["traffic_ok"] for g in got)
        order = all(g["order_ok"] for g in got)
        ok = traffic and order and worst <= MAX_TOL and frob <= FROB_TOL and layer <= LAYER_TOL
        if tr.rank == 0:
            print(f"{tr.size:>2} ranks {variant:<18} {label:<26} error: per layer {layer:.1e}, stack frobenius "
                  f"{frob:.1e} max {worst:.1e}  traffic {'==' if traffic else '!='} moe.traffic  "
                  f"collective order {'same' if order else 'DIFFERS'}  {'ok' if ok else 'FAIL'}", flush=True)
        if not ok:
            failures.append(f"{variant} {label}: layer err {layer:.3e}, frobenius err {frob:.3e}, max err "
                            f"{worst:.3e}, traffic ok {[g['traffic_ok'] for g in got]}, same collective order "
                            f"{[g['order_ok'] for g in got]}")
    return failures


def deferred_counts(*args, **kwargs):
    """A RealTransport in all_to_all mode that presents itself as device-split: the protocol posts the counts
    with the rows (kept here, exchanged at once) and reads them when the runtime computes the shards; its
    dispatch collective is then issued once those receives are posted. Checks, on CPUs, what the runtime
    and the protocol do differently for the nvshmem mode."""
    from real.transport import RealTransport

    class DeferredCounts(RealTransport):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.device_splits, self.posted = True, {}

        def post_counts(self, send_RX, key):
            self.posted[key] = self.exchange_counts(send_RX, key)

        def take_counts(self, key, derive):
            counts_RX = self.posted.pop(key)
            return np.concatenate([counts_RX[:, 0], counts_RX[:, 1:].sum(axis=0)])

    return DeferredCounts(*args, **kwargs)


def main(argv: list[str]) -> int:
    """One rank: `--backend gloo|nccl`, `--variants a,b`, `--quick`."""
    import torch

    from real import dist as rdist
    from real.groups import forget_process_groups, process_groups
    from real.transport import RealTransport

    backend = argv[argv.index("--backend") + 1] if "--backend" in argv else "gloo"
    variants = argv[argv.index("--variants") + 1].split(",") if "--variants" in argv else list(VARIANTS)
    where = rdist.init(backend, timeout_s=REAL["timeout_s"])
    torch.set_num_threads(1)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    groups = process_groups(backend, REAL["timeout_s"])
    failures = []
    for variant in variants:
        mode, ordered = {**VARIANTS, **GPU_VARIANTS}[variant]
        make = deferred_counts if variant.startswith("deferred") else RealTransport
        tr = make(groups, mode, device, REAL["timeout_s"], stream_ordered=True if backend == "nccl" else ordered)
        failures += check_cases(tr, variant, quick="--quick" in argv)
    if failures and where.rank == 0:
        print("\n".join(failures), file=sys.stderr)
    del tr, groups
    rdist.finish()
    forget_process_groups()
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------- tests
def test_two_gloo_ranks_match_reference_quick():
    codes, out, err = launch_local(2, [__file__, "--quick"], timeout_s=120)
    assert codes == [0, 0], out + err
    assert out.count(" ok") == len(VARIANTS), out + err


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_gloo_ranks_match_reference(ranks):
    codes, out, err = launch_local(ranks, [__file__], timeout_s=600)
    assert codes == [0] * ranks, out + err
    assert out.count(" ok") == len(VARIANTS) * len(cases(ranks)), out + err


def gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


@pytest.mark.gpu
@pytest.mark.parametrize("ranks", [2, 4])
def test_nccl_ranks_match_reference(ranks):
    if gpus() < ranks:
        pytest.skip(f"needs {ranks} GPUs, {gpus()} visible")
    variants = "p2p/stream,all_to_all/stream"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                           __file__, "--backend", "nccl", "--variants", variants], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": CHILD_PYTHONPATH})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(" ok") == 2 * len(cases(ranks)), proc.stdout + proc.stderr


@pytest.mark.gpu
def test_nccl_nvshmem_ranks_match_reference():
    """The nvshmem mode (NVSHMEM all_to_all_vdev, splits on the device) on 4 GPUs."""
    if gpus() < 4:
        pytest.skip(f"needs 4 GPUs, {gpus()} visible")
    from real import symm

    if not symm.available():
        pytest.skip("PyTorch's NVSHMEM library is not available")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
                           __file__, "--backend", "nccl", "--variants", "nvshmem/stream"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": CHILD_PYTHONPATH})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(" ok") == len(cases(4)), proc.stdout + proc.stderr


if __name__ == "__main__":  # one rank of a job started by launch_local or torchrun
    sys.exit(main(sys.argv[1:]))
