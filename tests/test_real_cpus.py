"""real.cpus: each GPU rank on whole physical cores of its own, near its GPU (a fake sysfs)."""

from __future__ import annotations

from pathlib import Path

from real import cpus


def fake_sysfs(root: Path, gpus: dict[str, str], cores: int, threads: int = 2) -> None:
    """`cores` physical cores of `threads` hardware threads: CPU c and c + cores share core c (Linux's usual
    numbering); gpus: bus id -> local_cpulist."""
    for bus, cpulist in gpus.items():
        d = root / "bus" / "pci" / "devices" / bus
        d.mkdir(parents=True)
        (d / "local_cpulist").write_text(cpulist + "\n")
    for c in range(cores * threads):
        d = root / "devices" / "system" / "cpu" / f"cpu{c}" / "topology"
        d.mkdir(parents=True)
        core = c % cores
        (d / "thread_siblings_list").write_text(",".join(str(core + t * cores) for t in range(threads)) + "\n")


def test_cpulists_parse():
    assert cpus.parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert cpus.parse_cpulist("") == []


def test_ranks_sharing_a_numa_node_get_whole_distinct_cores(tmp_path):
    # two NUMA nodes of 4 cores (8 threads) each; GPUs 0, 1 on node 0 (cores 0-3), GPUs 2, 3 on node 1
    fake_sysfs(tmp_path, {"0000:18:00.0": "0-3,8-11", "0000:2a:00.0": "0-3,8-11",
                          "0000:9a:00.0": "4-7,12-15", "0000:ab:00.0": "4-7,12-15"}, cores=8)
    buses = ["0000:18:00.0", "0000:2a:00.0", "0000:9A:00.0", "0000:ab:00.0"]
    allowed = set(range(16))
    got = [cpus.plan(r, 4, buses, allowed, tmp_path) for r in range(4)]
    assert got == [[0, 8, 1, 9], [2, 10, 3, 11], [4, 12, 5, 13], [6, 14, 7, 15]]
    flat = [c for g in got for c in g]
    assert len(flat) == len(set(flat))  # no CPU, hence no core, shared


def test_nothing_is_bound_without_enough_cores_or_topology(tmp_path):
    fake_sysfs(tmp_path, {"0000:18:00.0": "0"}, cores=1, threads=1)
    assert cpus.plan(1, 2, ["0000:18:00.0"], {0}, tmp_path) is None  # two ranks, one core
    assert cpus.plan(0, 1, [], {0}, tmp_path) is None
    # unknown GPU topology: the allowed CPUs, each its own core where siblings are unknown
    assert cpus.plan(1, 2, ["0000:77:00.0", "0000:78:00.0"], {0, 5, 6, 7}, tmp_path / "none") == [6, 7]


def test_uneven_shares_differ_by_one_core():
    cores = [[0], [1], [2], [3], [4]]
    assert [cpus.share(cores, i, 2) for i in range(2)] == [[0, 1, 2], [3, 4]]
    assert cpus.share(cores, 0, 6) is None
