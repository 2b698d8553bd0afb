"""kkoma: real-time piano transcription. The console command lives in :mod:`kkoma.cli`.

The repository keeps the architecture at its top level (``models/``, ``realtime/``, ``offline/``, ``config.toml``);
an installed wheel holds the same folders inside this package (``kkoma.models`` ...; ``pyproject.toml`` maps them).
In a source checkout (editable install, or a tree on ``PYTHONPATH``) this package's path also holds the checkout's
root, so ``kkoma.models`` is the checkout's ``models/`` folder and every checkout runs its own code.
"""
from importlib.metadata import PackageNotFoundError, version as _version
from pathlib import Path as _Path

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "models" / "settings.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 (a package's module-level __path__)

try:
    __version__ = _version("kkoma")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0+src"
