"""benchmarks/validation_grid.py's CPU-checkable parts: `--resume` reads what a cut job measured (the cases
themselves need GPUs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from validation_grid import CASES, portable, run_case  # noqa: E402


def rows(predicted: float, measured: float) -> list[dict]:
    return [{"quantity": "step_time_s", "predicted": predicted, "measured": measured,
             "rel_error": predicted / measured - 1}]


def test_resume_reads_a_measured_case_and_runs_no_other(tmp_path):
    case = CASES[4][0]
    done = tmp_path / f"g4-{case[0]}"
    done.mkdir()
    (done / "validate.json").write_text(json.dumps(rows(0.011, 0.010)))
    got = run_case(4, case, "unused.yaml", tmp_path, resume=True)
    assert got["case"] == done.name
    assert abs(got["step_time_s"]["rel_error"] - 0.1) < 1e-12


def test_specs_name_a_profile_inside_the_checkout_from_its_root(tmp_path):
    assert portable(ROOT / "experiments" / "profiles" / "p.yaml") == "experiments/profiles/p.yaml"
    assert portable(tmp_path / "p.yaml") == str(tmp_path / "p.yaml")
