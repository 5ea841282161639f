"""The benchmarks' read-bandwidth probe reads more than the last-level cache holds (tests/roofline.py)."""
from __future__ import annotations

from roofline import last_level_cache_bytes, read_buffer_bytes


def _cache(root, index, level, kind, size):
    d = root / f"index{index}"
    d.mkdir()
    (d / "level").write_text(f"{level}\n")
    (d / "type").write_text(f"{kind}\n")
    (d / "size").write_text(f"{size}\n")


def test_the_probe_reads_twice_the_last_level_cache(tmp_path):
    # what one Xeon VM reports: a 300 MiB L3, more than the 256 MiB probe the benchmarks first used
    _cache(tmp_path, 0, 1, "Data", "48K")
    _cache(tmp_path, 1, 1, "Instruction", "32K")
    _cache(tmp_path, 2, 2, "Unified", "2048K")
    _cache(tmp_path, 3, 3, "Unified", "307200K")
    assert last_level_cache_bytes(tmp_path) == 300 << 20
    assert read_buffer_bytes(cache=300 << 20) == 600 << 20
    assert read_buffer_bytes(cache=32 << 20) == 256 << 20  # a 32 MiB L3: the 256 MiB floor
    assert read_buffer_bytes(cache=0) == 256 << 20  # no cache reported


def test_an_unreadable_or_missing_cache_report_gives_none(tmp_path):
    assert last_level_cache_bytes(tmp_path) is None
    _cache(tmp_path, 0, 1, "Instruction", "1M")  # instruction caches do not count
    _cache(tmp_path, 1, 2, "Unified", "lots")
    assert last_level_cache_bytes(tmp_path) is None
    _cache(tmp_path, 2, 3, "Unified", "2M")
    assert last_level_cache_bytes(tmp_path) == 2 << 20
