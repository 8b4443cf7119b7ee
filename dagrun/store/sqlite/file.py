"""The SQLite store's file: where it is, how a new one is made, how it is opened, and whether it is still there.

A new store is built beside its path and linked into place whole, so a file at the path is always a
store that was made complete: one of zero bytes is damage, and is refused rather than taken for a new,
empty store (which SQLite would do). Connections open the file at the path and never create it. A store
opened for reading creates no directory and no store, and works where nothing can be written (a
read-only mount). An open connection in WAL mode goes on writing to its file after the file was deleted
or replaced, so the writer compares the file at the path with the one it opened (device and inode) after
each commit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tempfile
from pathlib import Path

from dagrun.errors import StoreError, StoreNotFound
from dagrun.private_files import chmod_command, make_private_directories, shared_files
from dagrun.store.sqlite import schema

logger = logging.getLogger(__name__)

DEFAULT_FILENAME = "dagrun.db"


def open_for_writing(
    path: str | os.PathLike[str], *, busy_timeout_s: float
) -> tuple[Path, sqlite3.Connection, sqlite3.Connection]:
    """The store at `path`, made if there is none: its file, a connection that writes and one that reads.
    StoreError, with the path, when it cannot be made or opened, or is not a store."""
    file = database_path(path)
    create_if_missing(file, busy_timeout_s=busy_timeout_s)
    check_not_empty(file)
    warn_if_shared(file)
    # SQLite would open a file it cannot write for reading only, and fail at the first commit.
    if not os.access(file, os.W_OK) or not (os.access(file.parent, os.W_OK) or Path(f"{file}-wal").exists()):
        raise StoreError(f"{file}: the store cannot be written here, it is read-only; reading it still works")
    writer = open_connection(file, busy_timeout_s=busy_timeout_s, prepare=True)
    try:
        reader = open_connection(file, busy_timeout_s=busy_timeout_s, prepare=False)
    except BaseException:
        writer.close()
        raise
    return file, writer, reader


def open_for_reading(path: str | os.PathLike[str], *, busy_timeout_s: float) -> tuple[Path, sqlite3.Connection, bool]:
    """The existing store at `path`: its file, a connection that only reads it, and whether reading it
    makes the WAL's files (see `remove_wal_files`). StoreNotFound when there is no store there; StoreError
    when it cannot be read or is not a store."""
    file = database_path(path, create=False)
    if not file.is_file():
        raise StoreNotFound(str(file))
    check_not_empty(file)
    warn_if_shared(file)
    # ``mode=ro`` reads through the WAL like any reader, so it sees what writers commit; it needs the -wal
    # and -shm files beside the database, and SQLite makes them if they are missing and the directory can
    # be written. Where neither holds, nobody writes the store (a writer would have made them), and
    # ``immutable=1`` reads the database file alone.
    has_wal = Path(f"{file}-wal").exists()
    immutable = not has_wal and not os.access(file.parent, os.W_OK)
    options = "mode=ro&immutable=1" if immutable else "mode=ro"
    conn = open_connection(file, busy_timeout_s=busy_timeout_s, prepare=False, options=options)
    try:
        if not schema.is_current(conn, file):  # an older dagrun's: upgraded first if it can be written
            _upgrade(file, busy_timeout_s=busy_timeout_s)
    except BaseException:
        conn.close()
        raise
    return file, conn, not has_wal and not immutable


def remove_wal_files(file: Path) -> None:
    """Remove the -wal and -shm files that reading `file` made, unless a connection still uses them: SQLite
    removes them when the last connection that may write the file closes. Nothing is written to the file."""
    with contextlib.suppress(sqlite3.Error):
        conn = connect(file, busy_timeout_s=0)
        try:
            conn.execute("PRAGMA user_version").fetchone()  # opens the WAL, so that closing removes it
        finally:
            conn.close()


def _upgrade(file: Path, *, busy_timeout_s: float) -> None:
    try:
        open_connection(file, busy_timeout_s=busy_timeout_s, prepare=True).close()
    except StoreError as exc:
        raise StoreError(
            f"{file}: the store was written by an older dagrun and must be upgraded before it can be read, but it"
            f" cannot be written ({exc.__cause__ or exc}); upgrade it where it can be written"
        ) from exc


def database_path(path: str | os.PathLike[str], *, create: bool = True) -> Path:
    """The database file for `path`, its directory created unless not to `create`: an existing directory,
    a path ending in a separator or one without a suffix names a directory that holds ``dagrun.db``.
    Directories it creates are 0700: the store holds every run's inputs, outputs and logs."""
    text = os.fspath(path)
    given = Path(text).expanduser()
    is_directory = given.is_dir() or (not given.exists() and (text.endswith(("/", os.sep)) or not given.suffix))
    file = given / DEFAULT_FILENAME if is_directory else given
    if not create:
        return file.absolute()
    try:
        make_private_directories(file.parent)
    except OSError as exc:
        raise StoreError(f"{file.parent}: cannot create the store directory: {exc.strerror or exc}") from exc
    return file.absolute()


def create_if_missing(file: Path, *, busy_timeout_s: float) -> None:
    """Make a new store at `file` unless a file is there: prepared under a temporary name in the same
    directory, then hard-linked into place, which fails if another process made one first (theirs is
    used then). StoreError, with the path, when it cannot be made. The file is 0600 (mkstemp's mode),
    and SQLite gives its -wal and -shm files the mode of the database file."""
    if file.exists():
        return
    try:
        handle, name = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".new", dir=file.parent)
    except OSError as exc:
        raise StoreError(f"{file.parent}: cannot create the store: {exc.strerror or exc}") from exc
    os.close(handle)
    draft = Path(name)
    try:
        conn = open_connection(draft, busy_timeout_s=busy_timeout_s, prepare=True)
        conn.close()  # the last connection: SQLite checkpoints the WAL into the file and removes it
        try:
            os.link(draft, file)
        except FileExistsError:
            pass  # another process made the store meanwhile
        except OSError:  # a file system without hard links: a rename is whole too, but replaces
            if not file.exists():
                os.replace(draft, file)
    except OSError as exc:
        raise StoreError(f"{file}: cannot create the store: {exc.strerror or exc}") from exc
    finally:
        for leftover in (draft, Path(f"{draft}-wal"), Path(f"{draft}-shm")):
            with contextlib.suppress(OSError):
                leftover.unlink()


def warn_if_shared(file: Path) -> None:
    """Log a warning with the chmod to run when other users can read or write the store's files (they hold
    every run's data); the files are left as they are."""
    shared = shared_files([file, Path(f"{file}-wal"), Path(f"{file}-shm")])
    if shared:
        logger.warning("%s: other users can read or write the store's files; run: %s", file, chmod_command(shared))


def check_not_empty(file: Path) -> None:
    """StoreError when the file has no bytes: dagrun never leaves an empty file at a store's path."""
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise StoreError(f"{file}: cannot open the SQLite store: {exc.strerror or exc}") from exc
    if size == 0:
        raise StoreError(
            f"{file}: the store file is empty (0 bytes), so it is a damaged store, not a new one; restore it from"
            " a backup, or remove it to start an empty store"
        )


FileId = tuple[int, int]  # (st_dev, st_ino): which file a path names


def file_id(file: Path) -> FileId | None:
    """Which file `file` names now; None when there is none."""
    try:
        found = file.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return found.st_dev, found.st_ino


def check_same_file(file: Path, opened: FileId | None) -> None:
    """StoreError when `file` no longer names the file that was opened: it was deleted or replaced.
    Another error of stat (a directory made unreadable) tells nothing, and is left to SQLite to report."""
    try:
        now = file_id(file)
    except OSError:
        return
    if now is not None and now == opened:
        return
    what = "was deleted" if now is None else "was replaced by another file"
    raise StoreError(
        f"{file}: the store file {what} while in use; what was written to it is lost, and no more writes are accepted"
    )


def connect(path: Path, *, busy_timeout_s: float, options: str = "mode=rw") -> sqlite3.Connection:
    """A connection to the existing file at `path` (the default `options`, SQLite's URI parameters, never
    create one) in autocommit mode (transactions are explicit), usable from the thread that owns it."""
    return sqlite3.connect(
        f"{path.as_uri()}?{options}", uri=True, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )


def open_connection(
    file: Path, *, busy_timeout_s: float, prepare: bool, options: str = "mode=rw"
) -> sqlite3.Connection:
    """A connection to the existing `file` with SQLite's URI `options`; with `prepare`, the file is switched
    to WAL and its schema created or migrated, else the connection only reads. StoreError, with the path,
    when it cannot be used."""
    try:
        conn = connect(file, busy_timeout_s=busy_timeout_s, options=options)
    except sqlite3.Error as exc:
        raise _open_error(file, exc) from exc
    try:
        if prepare:
            schema.prepare(conn, file)
        else:
            conn.execute("PRAGMA query_only = ON")  # the reader never writes
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise _open_error(file, exc) from exc
        raise
    return conn


def _open_error(file: Path, exc: sqlite3.Error) -> StoreError:
    if exc.sqlite_errorcode == sqlite3.SQLITE_NOTADB:
        return StoreError(f"{file}: not a SQLite database, so not a dagrun store; check the store's path")
    return StoreError(f"{file}: cannot open the SQLite store: {exc}")
