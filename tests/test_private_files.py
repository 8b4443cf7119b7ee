"""Private files: directories made 0700, files other users can read or write found, the chmod that fixes them."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagrun.private_files import chmod_command, make_private_directories, shared_files


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
def test_make_private_directories_makes_each_missing_one_0700_and_leaves_the_rest(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir(mode=0o755)

    make_private_directories(tmp_path / "shared" / "a" / "b")
    make_private_directories(tmp_path / "shared" / "a" / "b")

    assert [mode_of(tmp_path / "shared" / name) for name in ("", "a", "a/b")] == [0o755, 0o700, 0o700]


def test_make_private_directories_fails_where_a_file_is_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    with pytest.raises(NotADirectoryError):
        make_private_directories(tmp_path / "file" / "a")


def test_shared_files_are_those_others_can_read_or_write(tmp_path: Path) -> None:
    for name, mode in {"private": 0o600, "runnable": 0o711, "readable": 0o640, "writable": 0o602}.items():
        (tmp_path / name).write_text("")
        (tmp_path / name).chmod(mode)

    found = shared_files([tmp_path / name for name in ("private", "runnable", "readable", "writable", "missing")])

    assert found == [tmp_path / "readable", tmp_path / "writable"]


def test_chmod_command_quotes_each_path_for_the_shell(tmp_path: Path) -> None:
    assert chmod_command([Path("/a b/t"), "/c"]) == "chmod 600 '/a b/t' /c"
