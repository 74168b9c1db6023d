"""Running sweeps: the table, resuming, failures and --retry-failed, SIGKILL mid-way, process pools, MPI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from moe.cli.main import main
from moe.sweep import read_table, run_sweep
from moe.sweep.pool import Task, run_local, run_point
from moe.sweep.store import read_records

BASE = {"model": {"preset": "tiny"}, "cluster": {"nodes": 2, "gpus_per_node": 4},
        "placement": {"strategy": "contiguous"}, "sim": {"link_timeline": False},
        "workload": {"tokens_per_gpu": 64, "context_len": 64, "routing": {"distribution": "zipf"}}}


def write_sweep(tmp_path: Path, name: str = "s", **body) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": BASE, **body}, sort_keys=False))
    return path


SKEWS = {"axes": {"grid": {"workload.routing.skew": [0.0, 0.5, 1.0],
                           "placement.strategy": ["contiguous", "one_per_gpu"]}}}


def test_table_has_one_row_per_point_with_scenario_and_result_columns(tmp_path):
    out = tmp_path / "out"
    assert run_sweep(write_sweep(tmp_path, **SKEWS), out=out) == 0
    df = read_table(out)
    assert list(df["point"]) == list(range(6))
    assert list(df["status"]) == ["ok", "infeasible"] * 3  # one_per_gpu: 16 experts > 8 GPUs
    records = read_records(out)
    for _, row in df[df["status"] == "ok"].iterrows():
        result = records[f"sim-{row['spec_hash']}"]["result"]
        assert row["step_time_s"] == result["step_time_s"] and row["max_link"] == result["max_link"]
        assert row["breakdown.expert_s"] == result["breakdown"]["expert_s"]
        assert row["cluster.nodes"] == 2 and row["model.preset"] == "tiny"
        assert row["workload.routing.skew"] == result["spec"]["workload"]["routing"]["skew"]
    csv = read_table(out / "results.csv")
    assert list(csv.columns) == list(df.columns)
    assert csv["step_time_s"].tolist()[::2] == df["step_time_s"].tolist()[::2]
    assert csv["extra.node_tokens_rank0"].tolist()[0] == df["extra.node_tokens_rank0"].tolist()[0]
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["axes"] == ["workload.routing.skew", "placement.strategy"] and len(manifest["points"]) == 6


def test_rerun_skips_done_points(tmp_path, capsys):
    path, out = write_sweep(tmp_path, **SKEWS), tmp_path / "out"
    assert run_sweep(path, out=out) == 0
    assert "3/3 run, 3 skipped" in capsys.readouterr().err  # the 3 infeasible points are not run
    before = {p.name: p.read_text() for p in (out / "points").glob("*.json")}
    assert run_sweep(path, out=out) == 0
    assert {p.name: p.read_text() for p in (out / "points").glob("*.json")} == before  # nothing rewritten
    err = capsys.readouterr().err
    assert " run" not in err and "s: 6 points (3 infeasible, 3 ok)" in err


def _flaky_backend(monkeypatch, fail_skew: float) -> None:
    import sim.backend

    real_run = sim.backend.run

    def run(scenario, *, ranks=None):
        if scenario.workload.routing.skew == fail_skew:
            raise RuntimeError("injected failure")
        return real_run(scenario, ranks=ranks)

    monkeypatch.setattr(sim.backend, "run", run)


def test_a_failing_point_is_recorded_and_retry_failed_reruns_it(tmp_path, monkeypatch, capsys):
    path, out = write_sweep(tmp_path, **SKEWS), tmp_path / "out"
    _flaky_backend(monkeypatch, 0.5)
    assert main(["sweep", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "point 2 failed: RuntimeError: injected failure" in err and "--retry-failed" in err
    df = read_table(out)
    assert list(df["status"]) == ["ok", "infeasible", "failed", "infeasible", "ok", "infeasible"]
    assert "injected failure" in df["error"][2]
    assert main(["sweep", str(path), "--out", str(out)]) == 1  # a plain rerun leaves failed points alone
    assert read_table(out)["status"][2] == "failed"
    monkeypatch.undo()
    assert main(["sweep", str(path), "--out", str(out), "--retry-failed"]) == 0
    df = read_table(out)
    assert list(df["status"]) == ["ok", "infeasible"] * 3 and df["step_time_s"][2] > 0


def test_a_spec_error_while_running_is_infeasible_and_anything_else_failed():
    from moe.spec import load_scenario

    impossible = load_scenario({**BASE, "placement": {"strategy": "one_per_gpu"}}, check=False)
    record, trace = run_point(Task("sim", impossible, "h"))
    assert record["status"] == "infeasible" and record["error"].startswith("placement.strategy='one_per_gpu'")
    record, trace = run_point(Task("sim", None, "h"))
    assert record["status"] == "failed" and trace is None
    assert record["error"].startswith("AttributeError") and "Traceback" not in record["error"].splitlines()[0]


def test_jobs_2_gives_the_same_table(tmp_path):
    path = write_sweep(tmp_path, **SKEWS)
    assert run_sweep(path, out=tmp_path / "a") == 0
    assert run_sweep(path, out=tmp_path / "b", jobs=2) == 0
    a, b = read_table(tmp_path / "a"), read_table(tmp_path / "b")
    assert a["spec_hash"].tolist() == b["spec_hash"].tolist()
    assert a["step_time_s"].fillna(-1).tolist() == b["step_time_s"].fillna(-1).tolist()
    workers = {r["worker"] for r in read_records(tmp_path / "b").values() if r["status"] == "ok"}
    assert f"{os.uname().nodename}:{os.getpid()}" not in workers  # ran in the pool, not here


def die_on_second(task: Task):
    """A task runner whose worker process dies on one task (as an out-of-memory kill would)."""
    if task.spec_hash == "b":
        os._exit(3)
    return {"spec_hash": task.spec_hash, "status": "ok", "pid": os.getpid()}, None


def test_a_dying_worker_fails_only_its_own_point():
    tasks = [Task("sim", None, h) for h in "abcd"]
    done = {}
    run_local(tasks, 2, lambda t, o: done.__setitem__(t.spec_hash, o[0]), fn=die_on_second)
    assert sorted(done) == ["a", "b", "c", "d"]
    assert done["b"]["status"] == "failed" and "worker process died" in done["b"]["error"]
    assert all(done[h]["status"] == "ok" for h in "acd")


KILL_POINTS = 24


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigkill_mid_way_then_rerun_gives_every_point_exactly_once(tmp_path, jobs):
    axes = {"grid": {"workload.routing.skew": [0.1 * i for i in range(KILL_POINTS // 2)],
                     "schedule.comm": ["direct", "hierarchical"]}}
    path, out = write_sweep(tmp_path, axes=axes, set={"workload.tokens_per_gpu": 512}), tmp_path / "out"
    cmd = [sys.executable, "-m", "moe", "sweep", str(path), "--out", str(out), "--jobs", str(jobs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 60
    while len(read_records(out)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    survivors = {p.name: p.read_text() for p in (out / "points").glob("*.json")}
    assert 3 <= len(survivors) < KILL_POINTS, "the kill should land mid-way"
    assert not (out / "results.csv").exists()
    assert subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=120).returncode == 0
    df = read_table(out)
    assert sorted(df["point"]) == list(range(KILL_POINTS)) and set(df["status"]) == {"ok"}
    assert df["spec_hash"].is_unique
    records = [p for p in (out / "points").glob("*.json") if not p.name.startswith(".")]
    assert len(records) == KILL_POINTS
    assert all((out / "points" / name).read_text() == text for name, text in survivors.items())  # not rerun


def test_progress_eta_is_remaining_times_the_pool_rate():
    import io

    from moe.sweep.progress import Progress

    now = [100.0]
    stream = io.StringIO()
    p = Progress("x", total=4, skipped=2, stream=stream, now=lambda: now[0])
    assert p.eta_s() is None
    now[0] = 110.0
    p.advance()
    assert p.eta_s() == pytest.approx(30.0)
    now[0] = 120.0
    p.advance(failed=True)
    assert p.eta_s() == pytest.approx(20.0)
    assert "2/4 run, 2 skipped, 1 failed  0:20 elapsed, ETA 0:20" in p.line()


def test_a_second_sweep_on_the_same_folder_is_refused(tmp_path):
    from moe.errors import RunFailure
    from moe.sweep.store import OutLock

    with OutLock(tmp_path), pytest.raises(RunFailure, match="another sweep is writing"), OutLock(tmp_path):
        pass


@pytest.mark.mpi
def test_mpiexec_ranks_run_the_points(tmp_path):
    path, out = write_sweep(tmp_path, **SKEWS), tmp_path / "out"
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", "3", sys.executable, "-m", "moe", "sweep", str(path), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    df = read_table(out)
    assert list(df["status"]) == ["ok", "infeasible"] * 3
    assert proc.stderr.count("s: 6 points") == 1  # only rank 0 writes and reports
    workers = {r["worker"] for r in read_records(out).values() if r["status"] == "ok"}
    assert len(workers) >= 2  # both worker ranks took points


@pytest.mark.parametrize("method", ["bias", "capacity"])
def test_per_step_load_agrees_with_the_simulators_last_step(method):
    """The measure re-routes the steps the simulator routed: its last step is the Result's."""
    from moe.backends import load_backend
    from moe.spec import load_scenario
    from moe.sweep.measures import per_step_load

    s = load_scenario({**BASE, "workload": {**BASE["workload"], "steps": 3, "routing": {"distribution": "zipf",
                       "skew": 1.0}, "load_balance": {"method": method, "gamma": 0.5}}})
    m = per_step_load(s)
    r = load_backend("sim").run(s).result
    assert len(m["step_gpu_imbalance"]) == 3 == len(r.step_time_s_all)
    assert m["step_gpu_imbalance"][-1] == pytest.approx(r.expert_load_imbalance)
    requests = s.cluster.gpus * s.workload.tokens_per_gpu * s.model.top_k
    assert m["step_dropped_fraction"][-1] * requests * s.model.moe_layers == pytest.approx(r.dropped_tokens)
    if method == "bias":
        assert m["step_expert_imbalance"][-1] < m["step_expert_imbalance"][0]
        assert r.dropped_tokens == 0
    else:
        assert r.dropped_tokens > 0


def test_an_unavailable_backend_stops_before_any_point(tmp_path, capsys):
    path, out = write_sweep(tmp_path, **SKEWS), tmp_path / "out"
    assert main(["sweep", str(path), "--backend", "quantum", "--out", str(out)]) == 1
    assert "unknown backend 'quantum'" in capsys.readouterr().err
    assert not out.exists()
