"""Which op-table points `moetb calibrate --backend real` measures: the full token grid (the validation
sweep's tokens per GPU, 1 or 2 micro-batches, expert rows up to every rank's tokens at once), or the
points the `--scenario` files' micro-batches look up plus the grid's smallest ones, for which models.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from moe.errors import SpecError
from moe.spec.loader import build_scenario, load_preset, read_yaml
from moe.spec.schema import Model, Scenario

MODELS = ("paper", "deepseek-v3")
OP_TOKENS_FULL = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
OP_ROWS_FULL = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
OP_CONTEXTS_FULL = (256, 512, 1024, 2048, 4096, 8192)
OP_DECODE_FULL = ((1, 4, 16, 64, 256, 1024, 4096), (512, 2048, 8192))
OP_QUICK = ((128, 1024), (128, 1024), (1024,), ((16,), (2048,)))
OP_SMALLEST_PREFILL, OP_SMALLEST_DECODE = (64, 256), (1, 512)
MAX_CACHED = 1 << 22
"""Cached tokens (batch x context) of one layer in a decode point: 4.8 GB of MLA latent in BF16."""


def op_grid(quick: bool):
    from moe.model.optable import Grid, decode_pairs

    tokens, rows, contexts, (batches, keys) = OP_QUICK if quick else \
        (OP_TOKENS_FULL, OP_ROWS_FULL, OP_CONTEXTS_FULL, OP_DECODE_FULL)
    prefill = tuple((t, s) for s in contexts for t in (s // 4, s // 2, s, 2 * s, 4 * s) if t <= max(tokens))
    return Grid(tokens=tokens, rows=rows, prefill=prefill, decode=decode_pairs(batches, keys, MAX_CACHED),
                max_setup=MAX_CACHED)


Wire = tuple[str, str]


def preset_models() -> list[tuple[Model, Wire]]:
    return [(Model.model_validate({**load_preset("model", name), "preset": name}), ("fp8", "bf16"))
            for name in MODELS]


def load_scenarios(paths: Sequence[str]) -> list[Scenario]:
    """The scenario files of `moetb calibrate --scenario`, read for their model, schedule, workload and
    real options only (the cluster may name the profile being made)."""
    out = []
    for path in paths:
        raw = read_yaml(Path(path)) or {}
        if not isinstance(raw, dict):
            raise SpecError("--scenario", path, "the top level must be a mapping of keys")
        keep = {k: v for k, v in raw.items() if k in ("model", "schedule", "workload", "real")}
        out.append(build_scenario(keep, (), Path(path).parent, check=False))
    return out


def scenario_models(scenarios: Sequence[Scenario]) -> list[tuple[Model, Wire]]:
    return [(s.model, (s.schedule.dispatch_dtype, s.schedule.combine_dtype)) for s in scenarios]


def scenario_grid(scenarios: Sequence[Scenario]):
    """The op grid of `scenarios`: the token counts and (tokens, keys) pairs their micro-batches look up
    (sim.costs.micro_batches, the runtime's layout), plus the full grid's smallest points, whose times are
    the ops' fixed costs (sim.optable.op_floor_s); expert rows over the full grid."""
    from moe.model.optable import Grid
    from sim.costs import micro_batches

    tokens, prefill, decode = {OP_TOKENS_FULL[0]}, {OP_SMALLEST_PREFILL}, {OP_SMALLEST_DECODE}
    for s in scenarios:
        for mb in micro_batches(s):
            t, k = round(mb.tokens), round(mb.keys)
            tokens.add(t)
            (decode if s.workload.phase == "decode" else prefill).add((t, k))
    return Grid(tokens=tuple(sorted(tokens)), rows=OP_ROWS_FULL, prefill=tuple(sorted(prefill)),
                decode=tuple(sorted(decode)), max_setup=MAX_CACHED)
