"""The Result record: one flat record, the same for every backend (../shared/DESIGN.md "Result")."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class Breakdown(BaseModel):
    """Mean seconds per MoE layer spent in each phase on the critical rank (the one with the most time
    computing, its transport calls included). `dispatch_s` / `combine_s`: packing / summing plus the
    blocked wait for the shards / results, in every backend (a transfer hidden behind computation is not in
    them; the simulator also reports the transfers, `extra.dispatch_transfer_s` / `combine_transfer_s`).
    `exposed_comm_s` is the communication time not hidden behind computation."""

    model_config = ConfigDict(extra="forbid")
    attention_s: float = 0.0
    gate_s: float = 0.0
    dispatch_s: float = 0.0
    expert_s: float = 0.0
    combine_s: float = 0.0
    exposed_comm_s: float = 0.0


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    backend: str
    machine: str = ""
    """What ran it: the simulated profile's name, or the host/GPU that measured it."""
    spec_hash: str
    spec: dict[str, Any]
    step_time_s: float
    """One forward step of the whole model (median over repeats where the backend repeats)."""
    tokens_per_s: float
    tokens_per_s_per_gpu: float
    moe_layer_s: float
    """Mean time of one MoE layer."""
    breakdown: Breakdown = Field(default_factory=Breakdown)
    max_link_bytes: float = 0.0
    max_link: str = ""
    inter_node_bytes: float = 0.0
    expert_load_imbalance: float = 1.0
    """max / mean routed tokens per GPU."""
    dropped_tokens: int = 0
    kv_cache_bytes_per_token: int = 0
    peak_memory_bytes_per_gpu: int = 0
    wall_s: float = 0.0
    """Wall-clock seconds the backend took to produce this record."""
    repeats: int = 1
    step_time_s_all: list[float] = Field(default_factory=list)
    """Every measured step time, in order (empty for a single deterministic simulation)."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Backend-specific detail (per-rank phase times, link utilisation, ...)."""

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> Result:
        return cls.model_validate_json(text)

    @classmethod
    def read(cls, path: str | Path) -> Result:
        return cls.from_json(Path(path).read_text())


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old content or the new one, never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")
