"""atomic_io: the one helper behind every file the project writes for a user."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ddpm_from_scratch.saving.atomic_io import atomic_path, atomic_write, write_json_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "report.json"
    write_json_atomic({"fd": 1.5}, target)
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target, "w") as handle:
            handle.write('{"fd": ')
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"fd": 1.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_files_get_the_mode_a_plain_open_would_give(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.bin") as handle:
            handle.write(b"x")
        written = [tmp_path / "a.bin", write_json_atomic([1], tmp_path / "b.json")]
        with atomic_path(tmp_path / "c.safetensors") as tmp:
            tmp.write_bytes(b"y")
        written.append(tmp_path / "c.safetensors")
    finally:
        os.umask(previous)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_parent_folders_are_created_and_nan_is_kept(tmp_path):
    target = write_json_atomic({"loss": float("nan")}, tmp_path / "a" / "b" / "metrics.json")
    assert "NaN" in target.read_text()


def test_atomic_path_removes_its_temporary_file_on_error(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError("serialisation failed")
    assert list(tmp_path.iterdir()) == []


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w'"):
        with atomic_write(tmp_path / "x", "a"):
            pass
