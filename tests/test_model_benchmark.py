"""benchmarks/expert_gemm.py runs on the CPU (--quick) and writes its report."""

from __future__ import annotations

import importlib.util
import json

from conftest import ROOT


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("expert_gemm", ROOT / "benchmarks" / "expert_gemm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_expert_gemm_quick_on_cpu(tmp_path, capsys):
    bench = _load_benchmark()
    out = tmp_path / "expert_gemm.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["rows"]]
    assert names[:4] == ["expert.w13", "bare.w13", "expert.w2", "bare.w2"]
    assert {"quant.input", "quant.swiglu", "expert.total"} <= set(names)
    assert report["gemm_path"] == "dequant" and report["model"] == "tiny" and report["tokens"] == 64
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["expert.w13"]["mkn"] == [64, 256, 256] and rows["expert.w2"]["mkn"] == [64, 128, 256]
    assert all(r["median_s"] > 0 and r["repeats"] == 5 for r in report["rows"])
    s = report["summary"]
    assert s["ratio_expert_over_bare"] == s["bare_gemm_s"] / s["expert_gemm_s"]
    assert s["meets_target"] == (s["ratio_expert_over_bare"] >= 0.8)
    assert "expert GEMMs" in capsys.readouterr().out


def test_rowwise_path_can_be_forced(tmp_path):
    bench = _load_benchmark()
    out = tmp_path / "rowwise.json"
    bench.main(["--quick", "--path", "rowwise", "--repeats", "2", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["gemm_path"] == "rowwise" and all(r["repeats"] == 2 for r in report["rows"])
