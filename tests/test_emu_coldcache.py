"""emu.coldcache: the calibration times an operation after a pass that evicts the CPU caches."""

from __future__ import annotations

import pytest

from emu.coldcache import (
    FALLBACK_LLC_BYTES,
    LINE_BYTES,
    CacheFlusher,
    last_level_cache_bytes,
    median_time_s,
    parse_cache_size,
)


@pytest.mark.parametrize(("text", "nbytes"), [("32768K\n", 32 << 20), ("1M", 1 << 20), ("512", 512), ("2G", 2 << 30)])
def test_parse_cache_size(text, nbytes):
    assert parse_cache_size(text) == nbytes


def _index(root, name: str, level: int, kind: str, size: str) -> None:
    d = root / name
    d.mkdir()
    (d / "level").write_text(f"{level}\n")
    (d / "type").write_text(f"{kind}\n")
    (d / "size").write_text(f"{size}\n")


def test_last_level_cache_is_the_highest_data_or_unified_level(tmp_path):
    _index(tmp_path, "index0", 1, "Data", "32K")
    _index(tmp_path, "index1", 1, "Instruction", "64M")  # not data: ignored however large
    _index(tmp_path, "index2", 2, "Unified", "1024K")
    _index(tmp_path, "index3", 3, "Unified", "32768K")
    assert last_level_cache_bytes(tmp_path) == 32 << 20


def test_last_level_cache_falls_back_without_sysfs(tmp_path):
    assert last_level_cache_bytes(tmp_path / "missing") == FALLBACK_LLC_BYTES


def test_flusher_reads_every_cache_line_of_its_buffer():
    f = CacheFlusher(4096 + 1)
    assert f.nbytes == 4097 and f() == 4096 // LINE_BYTES + 1


def test_every_call_follows_a_flush_that_is_not_timed():
    events = []
    t = median_time_s(lambda: events.append("call"), warmup=1, repeats=3, before=lambda: events.append("flush"))
    assert events == ["flush", "call"] * 4
    assert t >= 0


def test_flush_time_is_not_counted():
    import time

    t = median_time_s(lambda: None, warmup=0, repeats=3, before=lambda: time.sleep(0.02))
    assert t < 0.01
