"""Audio sources for the live engine: a sound-card input (sounddevice / PortAudio) or a file played at real-time pace.

Both fill a :class:`realtime.ringbuffer.RingBuffer` with ``(n, channels)`` float32 frames at their own rate; the
engine mixes to mono and resamples to the model rate on the consumer side, so the audio callback only copies.
Common interface: ``sample_rate`` [Hz], ``channels``, ``block_size`` [samples], ``ring``, ``start()``, ``stop()``,
``finished`` (no more data will come), ``error`` (a KkomaError that ended the source, or None), ``overflows``
(blocks the driver reported as overflowed, PortAudio's ``input_overflow``), ``name``.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np  # imported before any stream starts: the callback must not trigger imports

from kkoma.models.errors import KkomaError
from kkoma.realtime.ringbuffer import RingBuffer

if TYPE_CHECKING:  # pragma: no cover
    from kkoma.models.settings import Settings


def _sd():
    try:
        import sounddevice as sd
    except OSError as e:  # PortAudio library missing
        raise KkomaError(f"audio input is unavailable: the PortAudio library cannot be loaded ({e}).") from None
    return sd


def input_devices() -> list[dict]:
    """Audio input devices: dicts with index, name, hostapi, channels, default_rate [Hz], default (bool)."""
    sd = _sd()
    try:
        devices = sd.query_devices()
        apis = sd.query_hostapis()
        default_in = sd.default.device[0]
    except Exception as e:
        raise KkomaError(f"cannot list audio devices ({e}).") from None
    if default_in is None or default_in < 0:
        default_in = next((a["default_input_device"] for a in apis if a["default_input_device"] >= 0), -1)
    out = []
    for d in devices:
        if d["max_input_channels"] > 0:
            out.append({"index": d["index"], "name": d["name"], "hostapi": apis[d["hostapi"]]["name"],
                        "channels": d["max_input_channels"], "default_rate": d["default_samplerate"],
                        "default": d["index"] == default_in})
    return out


def resolve_device(spec: str | int | None) -> dict:
    """An input device from an index, a (partial, case-insensitive) name, or ''/None for the default."""
    devices = input_devices()
    if not devices:
        raise KkomaError("no audio input device found; connect one, start JACK, or use --input FILE.")
    spec = "" if spec is None else str(spec).strip()
    if spec == "":
        for d in devices:
            if d["default"]:
                return d
        return devices[0]
    if spec.isdigit():
        for d in devices:
            if d["index"] == int(spec):
                return d
        raise KkomaError(f"audio device {spec} is not an input device; the inputs are: "
                         + "; ".join(f"{d['index']}: {d['name']}" for d in devices) + ".")
    exact = [d for d in devices if d["name"].lower() == spec.lower()]
    hits = exact or [d for d in devices if spec.lower() in d["name"].lower()]
    if len(hits) == 1 or (hits and len({d['name'] for d in hits}) == 1):
        return hits[0]
    listing = "; ".join(f"{d['index']}: {d['name']}" for d in devices)
    if hits:
        raise KkomaError(f"audio device name {spec!r} matches several inputs ({listing}); give more of the name "
                         "or an index.")
    raise KkomaError(f"no audio input matches {spec!r}; the inputs are: {listing}.")


class InputLost(KkomaError):
    """The audio input went away mid-stream (unplugged, its server died, taken by another program)."""


class AudioInput:
    """A sounddevice ``InputStream`` whose callback copies each block into the ring buffer and nothing else.

    Parameters
    ----------
    settings : ``live.*`` (block_size, ring_seconds, device, channels, device_rate).
    device, channels, sample_rate : override the settings (None = from settings; rate 0 = the device's default).
    """

    is_file = False

    def __init__(self, settings: "Settings", device=None, channels: int | None = None,
                 sample_rate: int | None = None):
        sd = _sd()
        live = settings.live
        d = resolve_device(live.device if device is None else device)
        self.device = d
        self.name = d["name"]
        ch = live.channels if channels is None else channels
        self.channels = int(ch) if ch and ch > 0 else int(d["channels"])
        if self.channels > d["channels"]:
            raise KkomaError(f"audio input {d['name']!r} has {d['channels']} channels, not {self.channels}.")
        rate = live.device_rate if sample_rate is None else sample_rate
        self.sample_rate = int(rate) if rate and rate > 0 else int(round(d["default_rate"]))
        self.block_size = int(live.block_size)
        try:
            sd.check_input_settings(device=d["index"], channels=self.channels, samplerate=self.sample_rate,
                                    dtype="float32")
        except Exception as e:
            raise KkomaError(f"audio input {d['name']!r} cannot record {self.channels} channel(s) at "
                             f"{self.sample_rate} Hz ({e}); try another --rate or --channels.") from None
        self.ring = RingBuffer(max(int(live.ring_seconds * self.sample_rate), 4 * self.block_size), self.channels)
        self.overflows = 0          # blocks PortAudio flagged input_overflow (samples lost before us)
        self.callback_errors = 0    # other status flags seen
        self.error: KkomaError | None = None
        self.finished = False
        self._stopping = False
        self._stream = None
        try:
            self._stream = sd.InputStream(device=d["index"], channels=self.channels, samplerate=self.sample_rate,
                                          blocksize=self.block_size, dtype="float32", callback=self._callback,
                                          finished_callback=self._finished)
        except Exception as e:
            raise KkomaError(f"cannot open audio input {d['name']!r} ({e}); is another program using it?") from None

    def _callback(self, indata, frames, time_info, status) -> None:
        if status:
            if status.input_overflow:
                self.overflows += 1
            else:
                self.callback_errors += 1
        self.ring.write(indata)

    def _finished(self) -> None:
        # Called by PortAudio when the stream ends: expected after stop(), otherwise the device went away.
        if not self._stopping:
            self.error = InputLost(f"the audio input {self.name!r} stopped delivering audio (unplugged?).")
        self.finished = True

    @property
    def active(self) -> bool:
        return self._stream is not None and bool(self._stream.active)

    def start(self) -> None:
        try:
            self._stream.start()
        except Exception as e:
            raise KkomaError(f"cannot start audio input {self.name!r} ({e}); is another program using it?") from None

    def stop(self, timeout: float = 2.0, abandon: bool = False) -> None:
        """Stop and close the stream; never blocks longer than ``timeout`` [s].

        PortAudio's JACK backend waits forever for a client whose server died (``jackd`` killed mid-stream can hang
        ``Pa_StopStream``), so the stream is closed on a helper thread; if that does not return, the stream is
        abandoned and sounddevice's exit handler (which would wait on it again) is unregistered. ``abandon``: the
        input is known lost (:class:`InputLost`); the same backend can also abort the whole process (an assertion
        in its stream clean-up) when a dead stream is stopped or closed, so a lost stream is not touched at all.
        """
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._stopping = True
        if abandon or isinstance(self.error, InputLost):
            import atexit

            atexit.unregister(_sd()._exit_handler)
            self.finished = True
            return

        def close():
            for step in (stream.stop, stream.close):
                try:
                    step()
                except Exception:
                    pass

        th = threading.Thread(target=close, name="kkoma-audio-close", daemon=True)
        th.start()
        th.join(timeout)
        if th.is_alive():
            import atexit

            atexit.unregister(_sd()._exit_handler)
        self.finished = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class FileInput:
    """An audio file fed block by block into the same ring buffer, at real-time pace or as fast as the engine reads.

    ``speed='realtime'``: one block every ``block_size / sample_rate`` seconds (on the wall clock, like a sound
    card; a late engine overflows the ring exactly as it would live). ``speed='max'``: waits for room in the ring
    instead, so nothing is ever dropped.
    """

    is_file = True

    def __init__(self, settings: "Settings", path, speed: str = "realtime"):
        import soundfile as sf

        self.path = Path(path)
        self.name = str(self.path)
        if not self.path.exists():
            raise KkomaError(f"audio file {self.path} does not exist.")
        try:
            self._file = sf.SoundFile(str(self.path))
        except Exception as e:
            raise KkomaError(f"cannot read audio file {self.path} ({e}).") from None
        if speed not in ("realtime", "max"):
            raise KkomaError(f"--speed must be realtime or max, not {speed!r}.")
        self.speed = speed
        self.sample_rate = int(self._file.samplerate)
        self.channels = int(self._file.channels)
        self.block_size = int(settings.live.block_size)
        self.ring = RingBuffer(max(int(settings.live.ring_seconds * self.sample_rate), 4 * self.block_size),
                               self.channels)
        self.overflows = 0
        self.error: KkomaError | None = None
        self.finished = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kkoma-file-input", daemon=True)

    @property
    def active(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        block = np.zeros((self.block_size, self.channels), np.float32)
        period = self.block_size / self.sample_rate
        t0 = time.perf_counter()
        n_blocks = 0
        try:
            while not self._stop.is_set():
                n = self._file.read(self.block_size, dtype="float32", always_2d=True, out=block).shape[0]
                if n == 0:
                    break
                if self.speed == "max":
                    while self.ring.capacity - self.ring.available < n and not self._stop.is_set():
                        time.sleep(0.001)
                else:
                    n_blocks += 1
                    delay = t0 + n_blocks * period - time.perf_counter()
                    if delay > 0:
                        self._stop.wait(delay)
                self.ring.write(block[:n])
        except Exception as e:
            self.error = KkomaError(f"cannot read audio file {self.path} ({e}).")
        finally:
            self.finished = True

    def stop(self, timeout: float = 5.0, abandon: bool = False) -> None:
        """Stop reading (``abandon`` has nothing to leave behind for a file; it is accepted as AudioInput's)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)
        self.finished = True
        try:
            self._file.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
