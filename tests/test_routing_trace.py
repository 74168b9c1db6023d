"""Routing traces: formats, replay order, the shipped example, and bad files (SpecError naming the file)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_spec

from moe.cli.main import main
from moe.errors import SpecError
from moe.routing import EXAMPLE_TRACE, example_trace, expert_ids, load_trace, write_trace
from moe.spec import load_scenario


def _ids(layers=2, tokens=10, k=4, experts=16, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([np.stack([rng.choice(experts, k, replace=False) for _ in range(tokens)])
                     for _ in range(layers)])


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_round_trip(tmp_path, suffix):
    ids = _ids()
    write_trace(tmp_path / f"t{suffix}", ids)
    assert np.array_equal(load_trace(tmp_path / f"t{suffix}", 16, 4), ids)


def test_replay_order_across_gpus_steps_and_layers(tmp_path):
    ids = _ids(layers=2, tokens=40)
    write_trace(tmp_path / "t.npz", ids)
    s = load_scenario(small_spec(workload={"tokens_per_gpu": 4, "routing": {"distribution": "trace",
                                                                              "trace": str(tmp_path / "t.npz")}}),
                      check=False)
    # 16 GPUs x 4 tokens = 64 per step: GPU g token t is trace token (step*64 + g*4 + t) mod 40
    got = expert_ids(s, layer=3, step=1, gpus=[2], tokens=[1])
    assert got[0, 0].tolist() == ids[3 % 2, (64 + 2 * 4 + 1) % 40].tolist()


def test_shipped_example_replays_with_the_tiny_model():
    s = load_scenario(small_spec(workload={"routing": {"distribution": "trace", "trace": str(EXAMPLE_TRACE)}}))
    ids = expert_ids(s, 0)
    assert ids.shape == (16, 64, 4)
    assert np.array_equal(load_trace(EXAMPLE_TRACE, 16, 4), example_trace())  # the generator reproduces it


@pytest.mark.parametrize("content,match", [
    ("wrong_k", r"expected \(layers, tokens, top_k=4\)"),
    ("out_of_range", r"expert id 16 out of range \[0, 16\)"),
    ("negative", r"expert id -1 out of range"),
    ("repeat", "same expert twice"),
    ("no_ids", "no array 'ids'"),
    ("floats", "must be integers"),
])
def test_bad_npz_traces(tmp_path, content, match):
    ids = _ids()
    path = tmp_path / "bad.npz"
    if content == "wrong_k":
        np.savez(path, ids=ids[:, :, :3])
    elif content == "out_of_range":
        ids[1, 3, 2] = 16
        np.savez(path, ids=ids)
    elif content == "negative":
        ids[0, 0, 0] = -1
        np.savez(path, ids=ids)
    elif content == "repeat":
        ids[0, 0, 1] = ids[0, 0, 0]
        np.savez(path, ids=ids)
    elif content == "no_ids":
        np.savez(path, experts=ids)
    else:
        np.savez(path, ids=ids.astype(float))
    with pytest.raises(SpecError, match=match) as err:
        load_trace(path, 16, 4)
    assert err.value.key == "workload.routing.trace" and str(path) in str(err.value)


def test_bad_csv_and_missing_files(tmp_path):
    (tmp_path / "gap.csv").write_text("layer,token,expert_0,expert_1\n0,0,1,2\n0,2,3,4\n")
    with pytest.raises(SpecError, match="every \\(layer, token\\) once"):
        load_trace(tmp_path / "gap.csv", 16, 2)
    (tmp_path / "text.csv").write_text("layer,token,expert_0\n0,0,x\n")
    with pytest.raises(SpecError, match="malformed CSV"):
        load_trace(tmp_path / "text.csv", 16, 1)
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(SpecError, match=r"\.npz or \.csv"):
        load_trace(tmp_path / "t.json", 16, 4)
    with pytest.raises(SpecError, match="not found"):
        load_trace(tmp_path / "none.npz", 16, 4)


def test_bias_cannot_steer_a_trace():
    s = load_scenario(small_spec(workload={"routing": {"distribution": "trace", "trace": str(EXAMPLE_TRACE)}}))
    with pytest.raises(SpecError, match="workload.load_balance.method"):
        expert_ids(s, 0, bias_E=np.ones(16))


def test_cli_exits_2_naming_the_trace_file(tmp_path, capsys):
    ids = _ids()
    ids[0, 0, 0] = 99
    np.savez(tmp_path / "bad.npz", ids=ids)
    spec = tmp_path / "s.yaml"
    spec.write_text("model: {preset: tiny}\ncluster: {nodes: 4, gpus_per_node: 4}\n"
                    "workload: {tokens_per_gpu: 16, routing: {distribution: trace, trace: bad.npz}}\n")
    assert main(["place", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "workload.routing.trace=" in err and "bad.npz" in err and "99" in err
