"""emu.coldcache: the calibration times an operation after a pass that evicts the CPU caches."""

from __future__ import annotations

import pytest

from emu.coldcache import FALLBACK_LLC_BYTES, CacheFlusher, cold_median_s, last_level_cache_bytes, parse_cache_size


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


def test_flusher_writes_its_whole_buffer():
    f = CacheFlusher(4096)
    f()
    f()
    assert f.nbytes == 4096 and int(f.buf.min()) == int(f.buf.max()) == 2


def test_every_call_follows_a_flush_that_is_not_timed():
    events = []
    t = cold_median_s(lambda: events.append("call"), lambda: events.append("flush"), warmup=1, repeats=3)
    assert events == ["flush", "call"] * 4
    assert t >= 0


def test_flush_time_is_not_counted():
    import time

    t = cold_median_s(lambda: None, lambda: time.sleep(0.02), warmup=0, repeats=3)
    assert t < 0.01
