"""Expert calls replayed as CUDA graphs (`ModelCalls.expert`) against eager expert calls, the rest as the
runtime runs it (front calls replayed), on one scenario; one rank per GPU under torchrun:
    torchrun --standalone --nproc-per-node G \
        benchmarks/measured/h100x4-2026-11-27k/expert_ab.py SPEC OUT [--eager-experts]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from moe.cli.main import main  # noqa: E402
from moe.model import graphs  # noqa: E402

if "--eager-experts" in sys.argv:
    sys.argv.remove("--eager-experts")

    def eager(self, block, expert, x, rows_R):
        return block.expert_forward(expert, x.index_select(rows_R) if isinstance(x, graphs.Fp8Act)
                                    else x.index_select(0, rows_R))

    graphs.ModelCalls.expert = eager
spec, out = sys.argv[1:3]
sys.exit(main(["run", spec, "--backend", "real", "--out", out]))
