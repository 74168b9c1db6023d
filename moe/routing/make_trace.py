"""Regenerate the shipped example routing trace: `python -m moe.routing.make_trace [OUT.npz|OUT.csv]`."""

import sys
from pathlib import Path

from moe.routing.trace import EXAMPLE_TRACE, example_trace, write_trace

if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else EXAMPLE_TRACE
    write_trace(target, example_trace())
    print(f"wrote {target}")
