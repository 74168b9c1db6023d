"""Bad input: exit code 2 and one line naming the key path and the offending value, never a traceback."""

from __future__ import annotations

import pytest
import yaml
from conftest import small_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe.cli.main import main
from moe.errors import SpecError
from moe.spec import load_scenario
from moe.spec.schema import Scenario

# (overrides on the small scenario, text the one-line error must contain)
CASES = [
    (["bogus=1"], "bogus=1: unknown key"),
    (["model.attention.heads_typo=4"], "model.attention.heads_typo=4: unknown key"),
    (["model.hidden=big"], "model.hidden='big'"),
    (["schedule.overlap=maybe"], "schedule.overlap='maybe'"),
    (["model.hidden=0"], "model.hidden=0"),
    (["cluster.nodes=-1"], "cluster.nodes=-1"),
    (["model.top_k=17"], "model.top_k=17: more than model.experts (16)"),
    (["model.topk_groups=5"], "model.topk_groups=5"),
    (["model.groups=3"], "model.groups=3: does not divide model.experts"),
    (["model.preset=gpt5"], "model.preset='gpt5': unknown preset"),
    (["cluster.preset=tpu-pod"], "cluster.preset='tpu-pod': unknown preset"),
    (["model.experts=32"], "placement.strategy='one_per_gpu'"),
    (["model.score=relu"], "model.score='relu'"),
    (["schedule.comm=ring"], "schedule.comm='ring'"),
    (["workload.routing.skew=-1"], "workload.routing.skew=-1"),
    (["workload.phase=train"], "workload.phase='train'"),
    (["model.dense_layers=4"], "model.dense_layers=4: more than model.layers (3)"),
    (["parallel.attention_tp=3"], "parallel.attention_tp=3: does not divide cluster.gpus_per_node"),
    (["schedule.micro_batches=65"], "schedule.micro_batches=65"),
    (["workload.routing.distribution=trace"], "workload.routing.trace=None"),
    (["model.experts=16.5"], "model.experts=16.5"),
    (["cluster.nodes=true"], "cluster.nodes=True"),
    (["model.hidden.width=1"], "model.hidden={'width': 1}: input should be a valid integer"),
    (["name.first=1"], "name='small': is not a section"),
    (["placement.strategy=contiguous", "placement.replicas=2"], "placement.replicas=2: strategy contiguous"),
    (["cluster.fabric_oversubscription=0.5"], "cluster.fabric_oversubscription=0.5"),
    (["cluster.preset=missing.yaml"], "cluster.preset='missing.yaml': profile file not found"),
    (["workload.routing.layer_variation=2.0"], "workload.routing.layer_variation=2.0"),
    (["placement.strategy=clever"], "placement.strategy='clever'"),
    (["schedule.dispatch_dtype=int4"], "schedule.dispatch_dtype='int4'"),
    (["model.attention.kind=gqa"], "model.attention.kind='gqa'"),
    (["placement.replicas=1"], "placement.replicas=1: one_per_gpu has only 0 spare GPUs"),
    (["oops"], "--set='oops': expected key.path=value"),
]


def _run(capsys, args):
    rc = main(args)
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.mark.parametrize(("overrides", "expected"), CASES, ids=[c[1][:40] for c in CASES])
def test_bad_override_exits_2_with_one_line(tmp_path, capsys, overrides, expected):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(small_spec()))
    args = ["describe", str(spec)]
    for o in overrides:
        args += ["--set", o]
    rc, err = _run(capsys, args)
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert expected in err


@pytest.mark.parametrize(("text", "expected"), [
    ("model: [unclosed\n", "malformed YAML"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("model: 5\n", "model=5: must be a mapping"),
    ("name: x\nmodel:\n  preset: tiny\n  hidden: 256\n\tbad: tab\n", "malformed YAML"),
    ("!!python/object/apply:os.system ['echo hacked']\n", "malformed YAML"),
])
def test_bad_files_exit_2(tmp_path, capsys, text, expected):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    rc, err = _run(capsys, ["describe", str(spec)])
    assert rc == 2 and expected in err and len(err.splitlines()) == 1


def test_missing_file_exits_2(tmp_path, capsys):
    rc, err = _run(capsys, ["describe", str(tmp_path / "nope.yaml")])
    assert rc == 2 and "nope.yaml" in err and "cannot read file" in err


def test_model_that_does_not_fit_names_memory(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"model": {"preset": "paper"}, "cluster": {"preset": "h800-ib", "nodes": 2},
                                    "placement": {"strategy": "contiguous"}}))
    rc, err = _run(capsys, ["describe", str(spec)])
    assert rc == 2 and "cluster.memory_GB=80.0: scenario needs" in err and "routed_expert" in err


# ------------------------------------------------------------------------------------------- fuzzing
KEYS = ["model", "cluster", "workload", "schedule", "placement", "parallel", "routing", "preset", "hidden",
        "experts", "top_k", "nodes", "gpus_per_node", "tokens_per_gpu", "skew", "strategy", "overlap", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True),
                    st.sampled_from(["tiny", "paper", "h800-ib", "zipf", "", "fp8", "mla"]), st.text(max_size=5))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
                     max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(st.sampled_from(KEYS), trees, max_size=5))
def test_loader_fuzz_only_raises_spec_error(tree):
    try:
        assert isinstance(load_scenario(tree), Scenario)
    except SpecError as err:
        assert "\n" not in str(err)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=80))
def test_yaml_text_fuzz_only_raises_spec_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_text(text)
    try:
        load_scenario(path)
    except SpecError as err:
        assert "\n" not in str(err)
