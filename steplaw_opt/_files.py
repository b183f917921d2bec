"""Writing files so that nothing is ever left half-written, and removing only what this process
made: a file created with ``O_EXCL`` is known by its inode, and is not removed once another
process has it open."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from steplaw_opt.errors import SteplawInputError


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: a reader
    sees the old file or the new one, never half of one (a law card, say)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise SteplawInputError(f"cannot write {str(path)!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------ files this process makes
@dataclass(frozen=True)
class NewFile:
    """A file this process created (with ``O_EXCL``: nobody had made it before), known by its
    device and inode, so that a file another process put at the same path later is not it."""

    path: Path
    dev: int
    ino: int


def create_new_file(path: str | Path) -> NewFile | None:
    """Create ``path`` empty, atomically (``O_CREAT | O_EXCL``): a :class:`NewFile` when this
    process made it, ``None`` when it already existed (another process made it first, however
    close the race). An empty file is a new database to SQLite."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return None
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    return NewFile(path, info.st_dev, info.st_ino)


def opened_elsewhere(new: NewFile) -> bool:
    """Whether a process other than this one, on this machine, has ``new`` open (Linux: its
    ``/proc/<pid>/fd``). Where that cannot be seen (no ``/proc``, another machine on a shared
    file system) the answer is ``False``; the folder lock (:func:`folder_lock`) covers
    steplaw-opt's own processes there."""
    me = str(os.getpid())
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
    except OSError:
        return False
    names = {str(new.path.absolute()), os.path.realpath(new.path)}
    names |= {f"{n} (deleted)" for n in names}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            link = f"/proc/{pid}/fd/{fd}"
            try:
                # the link's text first: stat would follow every link (a socket, a hung NFS
                # file) where only one naming this file can be it
                if os.readlink(link) not in names:
                    continue
                info = os.stat(link)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) == (new.dev, new.ino):
                return True
    return False


def remove_new_file(new: NewFile, suffixes: tuple[str, ...] = ("",)) -> bool:
    """Remove a file this process created, and the companions named by ``suffixes`` (SQLite's
    ``-journal``, ``-wal``, ``-shm``), unless it is not the file made any more (replaced) or
    another process has it open (it joined in: the file is its too). Returns whether removed."""
    try:
        info = os.stat(new.path)
    except OSError:
        return False  # already gone
    if (info.st_dev, info.st_ino) != (new.dev, new.ino) or opened_elsewhere(new):
        return False
    for suffix in suffixes:
        with contextlib.suppress(OSError):
            Path(f"{new.path}{suffix}").unlink()
    return True


class _FolderLock:
    """One folder's lock in this process: ``thread`` makes it one thread's at a time (and
    re-entrant in that thread), ``fd`` holds the ``flock`` while ``depth`` > 0, ``users``
    counts the threads holding or waiting for it (the entry goes when none is left)."""

    def __init__(self) -> None:
        self.thread = threading.RLock()
        self.fd: int | None = None
        self.depth = 0
        self.users = 0


_LOCKS: dict[str, _FolderLock] = {}  # folder → its lock, while a thread holds or waits for it
_LOCKS_GUARD = threading.Lock()  # for _LOCKS itself only: never held while waiting for a lock


def _flock(path: str) -> int | None:
    """An open descriptor of ``path`` holding an exclusive ``flock``, or ``None`` where it cannot
    be locked; never a descriptor left open by an error or a Ctrl-C while waiting."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        return None
    except BaseException:  # KeyboardInterrupt while waiting for another process
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` itself (no file written), so that steplaw-opt
    processes creating or opening a database in it do so one at a time; re-entrant within a
    thread, and one thread of the process at a time (a thread waiting for one folder does not
    hold up another folder's). A folder that cannot be locked (missing, Windows, a file system
    without locks): no lock."""
    key = os.path.realpath(folder)
    with _LOCKS_GUARD:
        entry = _LOCKS.get(key)
        if entry is None:
            entry = _LOCKS[key] = _FolderLock()
        entry.users += 1
    try:
        with entry.thread:
            if entry.depth == 0:
                entry.fd = _flock(key)
            entry.depth += 1
            try:
                yield
            finally:
                entry.depth -= 1
                if entry.depth == 0 and entry.fd is not None:
                    fd, entry.fd = entry.fd, None
                    os.close(fd)  # releases the lock
    finally:
        with _LOCKS_GUARD:
            entry.users -= 1
            if entry.users == 0:
                del _LOCKS[key]
