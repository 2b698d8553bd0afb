"""Atomic file writes: a file that exists is always complete (interrupts, crashes and full disks included)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temp file beside ``path``, fsync it, then rename it over ``path``.

    The temp name keeps ``path``'s suffix (``.name.<pid>.tmp.flac``), so writers that infer the format from it
    (soundfile, NumPy, matplotlib) still do; it is removed on any failure or interrupt.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
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
