"""Atomic file writes: a file that exists is always complete (interrupts, crashes and full disks included)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a new temp file beside ``path``, fsync it, rename it over ``path``, fsync the folder.

    The temp name is unique (pid + random) and keeps ``path``'s suffix (``.name.<pid>.<hex>.tmp.flac``), so writers
    that infer the format from it (soundfile, NumPy, matplotlib) still do. It is created with mode 0666, so the
    umask decides the final permissions as for any new file, and it is removed on any failure or interrupt.
    Errors propagate unchanged (callers turn ``OSError`` into their own one-sentence message).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{os.urandom(4).hex()}.tmp{path.suffix}")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Remove the temp files :func:`atomic_write` left beside ``path`` when its process was killed mid-write
    (SIGKILL leaves no chance to clean up). Only for a caller that knows no writer of ``path`` is still running."""
    import glob

    path = Path(path)
    for tmp in path.parent.glob(f".{glob.escape(path.stem)}.*.tmp{glob.escape(path.suffix)}"):
        try:
            tmp.unlink()
        except OSError:
            pass


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); best effort, as not every system allows opening a folder."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
