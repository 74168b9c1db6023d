"""Sweeps: a base scenario plus axes -> one table of Results (Parquet and CSV), resumable and parallel.

    moetb sweep experiments/placement.yaml --jobs 2          # local process pool
    mpiexec -n 9 moetb sweep experiments/ep_scaling.yaml     # rank 0 schedules, 8 ranks run points

    from moe.sweep import run_sweep, load_sweep, expand, read_table
    code = run_sweep("experiments/overlap.yaml", jobs=2, out="results/overlap")
    df = read_table("results/overlap")                       # pandas DataFrame

See moe.sweep.spec for the file format, moe.sweep.run for outputs and exit codes.
"""

from moe.sweep.points import Point, expand
from moe.sweep.run import run_sweep, sweep_points
from moe.sweep.spec import Axis, Sweep, load_sweep, parse_sweep
from moe.sweep.table import read_table, table_path

__all__ = ["Axis", "Point", "Sweep", "expand", "load_sweep", "parse_sweep", "read_table", "run_sweep",
           "sweep_points", "table_path"]
