"""Atomic writes: all or nothing, and files as readable as any other the user makes."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from powersampling import io


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_umask_is_read_without_changing_it(umask):
    assert io.current_umask() == umask
    assert io.current_umask() == umask


def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask):
    io.write_parquet(pd.DataFrame({"x": [1, 2]}), tmp_path / "a.parquet")
    io.write_table(pd.DataFrame({"x": [1]}), tmp_path / "t.parquet")
    io.write_text_atomic(tmp_path / "b.txt", "hello")
    plain = tmp_path / "plain.txt"
    plain.write_text("made by open()")
    for name in ["a.parquet", "t.parquet", "t.csv", "b.txt"]:
        assert mode(tmp_path / name) == mode(plain) == 0o666 & ~umask, name


def test_atomic_dir_gets_the_mode_the_umask_gives_and_replaces(tmp_path, umask):
    target = tmp_path / "model"
    with io.atomic_dir(target) as work:
        (work / "weights").write_text("1")
        (work / "private").write_text("as save_pretrained writes safetensors")
        os.chmod(work / "private", 0o600)
        (work / "sub").mkdir(mode=0o700)
        (work / "sub" / "inner").write_text("x")
    assert mode(target) == mode(target / "sub") == 0o777 & ~umask
    for name in ["weights", "private", "sub/inner"]:
        assert mode(target / name) == 0o666 & ~umask, name
    with io.atomic_dir(target) as work:
        (work / "weights").write_text("2")
    assert (target / "weights").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing left beside it


def test_failed_writes_leave_nothing(tmp_path):
    with pytest.raises(RuntimeError), io.atomic_dir(tmp_path / "model") as work:
        (work / "half").write_text("x")
        raise RuntimeError("killed")

    def writer(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        io.write_atomic(tmp_path / "out.txt", writer)
    assert list(tmp_path.iterdir()) == []
