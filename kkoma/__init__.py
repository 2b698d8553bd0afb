"""kkoma: real-time piano transcription. The console command lives in :mod:`kkoma.cli`."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("kkoma")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0+src"
