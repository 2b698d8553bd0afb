"""Audio front end shared by every driver: decode, mix to mono, resample to the model rate (:mod:`models.resample`,
the same filter for files and live input).

Conventions: audio arrays are float32; a 2-D array is ``(n_samples, n_channels)`` (soundfile's layout) and is mixed
to mono by averaging the channels. Non-finite samples are never passed on silently: :func:`check_finite` raises.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from kkoma.models.errors import KkomaError, KkomaWarning
from kkoma.models.resample import Resampler, resample

#: [frames at the file's rate] piece size when decoding what is left of a damaged block
_SALVAGE_FRAMES = 1024


def to_mono(x: np.ndarray) -> np.ndarray:
    """``(n,)`` or ``(n, n_channels)`` -> ``(n,)`` float32 (mean of the channels)."""
    x = np.asarray(x)
    if x.ndim == 1:
        return x.astype(np.float32, copy=False)
    if x.ndim == 2:
        if x.shape[1] == 1:
            return x[:, 0].astype(np.float32, copy=False)
        return x.mean(axis=1, dtype=np.float64).astype(np.float32)
    raise KkomaError(f"audio must be (n_samples,) or (n_samples, n_channels), not an array of shape {x.shape}.")


def check_finite(x: np.ndarray, what: str = "audio") -> None:
    """Raise KkomaError naming the first NaN/Inf sample, so a bad input never becomes silent NaN frames."""
    if x.size and not np.isfinite(x).all():
        first = int(np.flatnonzero(~np.isfinite(x.reshape(-1)))[0])
        raise KkomaError(f"{what} contains NaN or infinite samples (first at sample {first}).")


def audio_info(path: str | Path) -> tuple[int, int, float]:
    """(sample_rate [Hz], channels, duration [s]) of a file, without decoding it; KkomaError if unreadable."""
    path = Path(path)
    _check_exists(path)
    try:
        import soundfile as sf

        info = sf.info(str(path))
        return int(info.samplerate), int(info.channels), float(info.duration)
    except Exception:
        pass
    try:
        import audioread

        with audioread.audio_open(str(path)) as f:
            return int(f.samplerate), int(f.channels), float(f.duration)
    except Exception as e:
        raise KkomaError(f"{path} is not an audio file kkoma can read ({_reason(e)}).") from None


def load_audio(path: str | Path, settings, sample_rate: int | None = None) -> np.ndarray:
    """Decode a whole audio file -> ``(n_samples,)`` float32 mono at ``sample_rate`` [Hz] (default: the model rate,
    ``audio.sample_rate``), resampled with :mod:`models.resample` (the filter of the live input).

    WAV/FLAC/OGG (and MP3 where libsndfile supports it) go through soundfile; anything else through librosa's
    audioread fallback. Raises KkomaError naming the file if it is missing, unreadable, or holds NaN/Inf samples.
    For long files use :func:`stream_audio`, which keeps memory bounded.
    """
    path = Path(path)
    _check_exists(path)
    try:
        import soundfile as sf

        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as sf_error:
        try:
            import librosa

            x, sr = librosa.load(str(path), sr=None, mono=False)
            x = np.atleast_2d(x).T.astype(np.float32)
        except Exception:
            raise KkomaError(f"{path} is not an audio file kkoma can read ({_reason(sf_error)}).") from None
    y = to_mono(x)
    check_finite(y, str(path))
    return resample(y, int(sr), sample_rate or settings.audio.sample_rate, settings)


def stream_audio(path: str | Path, settings, block_seconds: float = 10.0, on_warning=None):
    """Yield ``(n,)`` float32 mono blocks at the model rate ``audio.sample_rate`` [Hz] from a file, decoding a block
    at a time; the samples are those of :func:`load_audio` (same resampler, streamed).

    Memory stays bounded by ``block_seconds`` whatever the file length. Raises KkomaError as :func:`load_audio`.
    A file that stops decoding part-way (truncated or damaged) yields everything up to the last sample that decodes
    and then reports, through ``on_warning(message)`` (default: :func:`warnings.warn` with :class:`KkomaWarning`),
    one sentence naming the time [s] where it stops; only a file of which nothing decodes raises.
    """
    sample_rate = settings.audio.sample_rate
    path = Path(path)
    _check_exists(path)
    import soundfile as sf

    try:
        f = sf.SoundFile(str(path))
    except Exception:
        # Formats libsndfile cannot stream (e.g. some MP3s): decode whole, then hand out blocks.
        y = load_audio(path, settings)
        step = max(1, int(block_seconds * sample_rate))
        for i in range(0, len(y), step):
            yield y[i:i + step]
        return
    with f:
        rate = f.samplerate
        rs = Resampler(rate, sample_rate, settings)
        block = max(1, int(block_seconds * rate))
        offset = 0  # [input samples] decoded so far

        def resampled(pieces):
            nonlocal offset
            for x in pieces:
                y = to_mono(x)
                check_finite(y, f"{path} (block at {offset / rate:.1f} s)")
                offset += len(y)
                out = rs.process(y)
                if len(out):
                    yield out

        def rest_in_small_pieces():
            # libsndfile refuses a whole block that runs into a truncated or damaged part: the rest of that block is
            # read in small pieces, so the file is transcribed as far as it decodes.
            f.seek(offset)
            while len(x := f.read(_SALVAGE_FRAMES, dtype="float32", always_2d=True)):
                yield x

        error = None
        for pieces in (lambda: f.blocks(blocksize=block, dtype="float32", always_2d=True), rest_in_small_pieces):
            try:
                yield from resampled(pieces())
                error = None
                break
            except KkomaError:
                raise
            except Exception as e:
                error = e
        if error is not None:
            if offset == 0:
                raise KkomaError(f"{path} could not be decoded ({_reason(error)}).")
            message = (f"{path} stops decoding at {offset / rate:.1f} s of {f.frames / rate:.1f} s (truncated or "
                       f"damaged: {_reason(error)}); transcribed up to there.")
            if on_warning is None:
                warnings.warn(message, KkomaWarning, stacklevel=2)
            else:
                on_warning(message)
        tail = rs.flush()
        if len(tail):
            yield tail


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise KkomaError(f"{path} does not exist.")
    if path.is_dir():
        raise KkomaError(f"{path} is a folder, not an audio file.")


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.rstrip(".")
