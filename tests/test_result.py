"""Result record JSON round trip, atomic writes, Chrome trace structure."""

from __future__ import annotations

import json

import pytest

from moe.result import Breakdown, Result, Sample, Span, Trace, chrome_trace, write_json_atomic, write_trace


def make_result(**over) -> Result:
    base = dict(backend="sim", spec_hash="abc", spec={"name": "x"}, step_time_s=0.5, tokens_per_s=100.0,
                tokens_per_s_per_gpu=10.0, moe_layer_s=0.01, breakdown=Breakdown(dispatch_s=0.002, expert_s=0.005))
    return Result(**{**base, **over})


def test_result_json_round_trip(tmp_path):
    r = make_result(step_time_s_all=[0.5, 0.6], repeats=2, extra={"ranks": [1, 2]})
    assert Result.from_json(r.to_json()) == r
    write_json_atomic(tmp_path / "result.json", r.to_dict())
    assert Result.read(tmp_path / "result.json") == r
    assert list(tmp_path.iterdir()) == [tmp_path / "result.json"]  # no temporary file left behind


def test_comparison_sets_the_calibration_host_probe_beside_the_run_s():
    from moe.result.summary import compare, format_comparison

    predicted = make_result(spec={"name": "x", "cluster": {"host_probe_s": 0.0026}})
    measured = make_result(backend="emu", extra={"host_probe_s": 0.002})
    probe = [r for r in compare(predicted, measured) if r["quantity"] == "host_probe_s"]
    assert probe == [{"quantity": "host_probe_s", "predicted": 0.0026, "measured": 0.002,
                      "rel_error": pytest.approx(0.3)}]  # calibrated on a host 1.3x slower than the run's
    text = format_comparison(predicted, measured)
    assert "host_probe_s" in text and "the host was slower by 30% while the profile was calibrated" in text
    assert "the host was" not in format_comparison(predicted, make_result(extra={"host_probe_s": 0.0025}))
    assert all(r["quantity"] != "host_probe_s" for r in compare(make_result(), measured))  # no profile probe


def test_host_probe_times_its_reference_workload():
    from moe.hostprobe import host_probe_s, reference

    assert reference() == reference()  # deterministic work
    assert 1e-5 < host_probe_s() < 1.0


def test_host_probe_drift_warns_only_beyond_its_limit():
    from moe.hostprobe import DRIFT_WARN, calibration_probe, drift, drift_warning

    assert drift([2e-3, 1e-3], [2e-3, 1.1e-3]) == pytest.approx(0.1)
    assert drift([2e-3, 1e-3], [1e-3, 1e-3]) == pytest.approx(1.0)  # 2x faster counts as 2x slower does
    assert calibration_probe([(1e-3, 3e-3), (2e-3, 2e-3), (4e-3, 4e-3)], "x") == pytest.approx(2e-3)
    steady = [1e-3 * (1 + DRIFT_WARN * 0.9)]
    assert drift_warning([1e-3], steady) is None
    text = drift_warning([1.4e-3, 1.5e-3], [1.5e-3, 2.8e-3], "op table")
    assert text.startswith("warning: the host probe moved 87% during the op table (before 1.40-1.50 ms, "
                           "after 1.50-2.80 ms over ranks)")


def test_result_rejects_unknown_fields():
    with pytest.raises(ValueError):
        Result.model_validate({**make_result().to_dict(), "surprise": 1})


def test_atomic_write_keeps_old_content_on_failure(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_chrome_trace_lanes_and_units(tmp_path):
    trace = Trace(spans=[Span(0, "compute", "expert", 0.001, 0.003), Span(1, "comm", "dispatch", 0.0, 0.002)],
                  samples=[Sample("links", "gpu0.nic_out", 0.001, {"util": 0.5})], rank_names={0: "GPU 0"})
    data = chrome_trace(trace)
    complete = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert {(e["pid"], e["name"], e["ts"], e["dur"]) for e in complete} == {(0, "expert", 1000.0, 2000.0),
                                                                           (1, "dispatch", 0.0, 2000.0)}
    names = {(e["pid"], e.get("tid"), e["args"]["name"]) for e in data["traceEvents"] if e["ph"] == "M"
             and e["name"] in ("process_name", "thread_name")}
    assert (0, None, "GPU 0") in names and (0, 0, "compute") in names and (1, 1, "comm") in names
    assert any(e["ph"] == "C" and e["args"] == {"util": 0.5} for e in data["traceEvents"])
    write_trace(tmp_path / "trace.json", trace)
    assert json.loads((tmp_path / "trace.json").read_text())["displayTimeUnit"] == "ms"
