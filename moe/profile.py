"""Hardware profiles: the `cluster` section of a scenario as a YAML file (`cluster.preset: path.yaml`).

`moetb calibrate` writes one; a scenario uses it by naming the file as its cluster preset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from moe.errors import SpecError
from moe.result import write_text_atomic
from moe.spec.schema import Cluster


def write_profile(path: str | Path, profile: dict[str, Any], header: str = "") -> None:
    """Validate a cluster mapping and write it atomically as YAML, with `header` as leading comments."""
    try:
        Cluster.model_validate({"preset": "calibrated", **profile})
    except Exception as err:  # a calibration that produced an impossible value is a bug, say which
        raise SpecError(str(path), profile.get("name", "?"), f"calibrated profile is invalid: {err}") from None
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    text = "\n".join(lines + [yaml.safe_dump(profile, sort_keys=False, width=110)])
    write_text_atomic(path, text)
