"""Private files: directories made 0700, and a token file that other users can read or write refused
with the chmod that fixes it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagrun.errors import InsecureFile
from dagrun.private_files import chmod_command, make_private_directories, read_private_text, shared_files


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


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700, 0o611])
def test_a_file_only_its_owner_can_read_or_write_is_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    path.chmod(mode)

    assert read_private_text(str(path), what="token file") == "s3cret\n"


@pytest.mark.parametrize("mode", [0o640, 0o620, 0o604, 0o602, 0o666])
def test_a_file_others_can_read_or_write_is_refused_with_the_chmod_to_run(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "a token"
    path.write_text("s3cret\n")
    path.chmod(mode)

    with pytest.raises(InsecureFile) as caught:
        read_private_text(str(path), what="token file")

    assert (caught.value.path, caught.value.mode) == (str(path), mode)
    assert str(caught.value) == (
        f"token file {str(path)!r}: other users can read or write it (mode {mode:04o}); run: chmod 600 '{path}'"
    )
    assert "s3cret" not in str(caught.value)


def test_chmod_command_quotes_each_path_for_the_shell(tmp_path: Path) -> None:
    assert chmod_command([Path("/a b/t"), "/c"]) == "chmod 600 '/a b/t' /c"
