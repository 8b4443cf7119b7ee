"""Private files: what holds a secret (a store, a token) is readable and writable by its owner only.

Directories dagrun makes are 0700 and its files 0600. A file that other users can read or write is
refused when it holds a token, and warned about when it is a store (users' files are never changed
silently); either way the message gives the `chmod` that makes it private.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Iterable
from pathlib import Path

from dagrun.errors import InsecureFile

SHARED_BITS = stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH  # what others may do: read or write
DIRECTORY_MODE = 0o700


def make_private_directories(directory: Path) -> None:
    """Create `directory` and its missing parents, each 0700 (less what the umask removes); OSError as
    mkdir raises it. Directories that exist are left as they are."""
    missing: list[Path] = []
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for candidate in reversed(missing):
        try:
            candidate.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:
            if not candidate.is_dir():
                raise
            # made by another process meanwhile


def shared_files(paths: Iterable[Path]) -> list[Path]:
    """Those of `paths` that exist and that users other than their owner can read or write."""
    shared = []
    for path in paths:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            continue
        if mode & SHARED_BITS:
            shared.append(path)
    return shared


def chmod_command(paths: Iterable[str | os.PathLike[str]]) -> str:
    """The shell command that makes `paths` readable and writable by their owner only."""
    return "chmod 600 " + " ".join(shlex.quote(os.fspath(path)) for path in paths)


def read_private_text(path: str, *, what: str) -> str:
    """The text of the file at `path`, which only its owner may read or write: InsecureFile (naming it
    as `what`, with the chmod to run) when others can; OSError when it cannot be read. The mode is
    checked on the open file, so the file judged is the file read."""
    with open(path, encoding="utf-8") as file:
        mode = os.fstat(file.fileno()).st_mode
        if mode & SHARED_BITS:
            raise InsecureFile(path, stat.S_IMODE(mode), what=what, fix=chmod_command([path]))
        return file.read()
