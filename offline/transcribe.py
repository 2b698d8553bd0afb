"""Offline transcription: audio files of any length -> ``.mid`` (and ``.csv`` / ``.json`` / piano-roll ``.png``).

The file driver of the one pipeline (docs/design.md §1): a file is decoded and resampled a block at a time
(:func:`models.audio.stream_audio`: ``soundfile.blocks`` + the streaming :mod:`models.resample`) and pushed through
the same streaming :class:`models.pipeline.Transcriber` the live path uses, in blocks of ``transcribe.chunk_frames``
frames.
Nothing proportional to the file length is held except the notes themselves (and, with ``--piano-roll``, a
``(n_frames, 2)`` min/max envelope of the waveform), so a one-hour file runs in the memory of a ten-second one.

Many files run in a process pool (:mod:`offline.pool`) of ``transcribe.jobs`` processes, or, with 0 (the default), as
many as :func:`choose_layout` finds fastest for the usable cores (affinity, cgroup quota) and the number of files: one
process until there are four cores. A stream is stateful, so one file is always transcribed from start to end by one
worker; workers never share a file.

The model runs on the CPU (NumPy/Numba, :mod:`models.inference`) or, with ``transcribe.device = gpu`` (``kkoma
transcribe --device``), in TensorFlow (:mod:`models.tf_inference`), which gives the same probabilities (within
1e-4) and so the same notes; each worker then holds its own TensorFlow model, sharing the GPU.

Outputs are written only after the whole file has been transcribed, each through a temporary file and an atomic
``os.replace``: an interrupted run (Ctrl-C, a crash, a full disk) leaves either the complete previous file or none,
never a half-written one.

Bad input is a per-file failure with one line naming the file and the reason; the other files are still done.
NaN/Inf samples are such a failure (the decoder refuses them, naming the first bad sample's block), because a
transcription of a damaged signal is not one a user should trust silently. Empty or silent audio is not a failure:
it gives a valid MIDI file without notes.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from kkoma.models.atomic import atomic_write as _atomic_write, remove_stale_temps
from kkoma.models.errors import KkomaError
from kkoma.models.pipeline import make_transcriber

# Extensions picked up when a folder is given (an explicitly named file is tried whatever its extension).
AUDIO_EXTENSIONS = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
                              ".au", ".w64", ".rf64", ".caf"})
FORMATS = ("mid", "csv", "json")


class Interrupted(Exception):
    """Raised inside a worker when the user asked the run to stop (Ctrl-C)."""


# ---------------------------------------------------------------------------------------------------------------
# Finding the inputs and planning the outputs
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One audio file and the files it will produce (``outputs``: format -> path)."""
    audio: Path
    outputs: dict
    display: str


@dataclass
class Failure:
    path: str
    reason: str


def _is_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def find_inputs(specs: Sequence[str]) -> tuple[list[tuple[Path, Path]], list[Failure]]:
    """Expand files, folders (recursively) and glob patterns into audio files.

    Returns
    -------
    inputs : ``[(audio_path, relative_parent)]`` in a stable order, duplicates removed. ``relative_parent`` is the
        file's folder relative to the folder it was found in (``Path()`` for a named file), so ``-o OUT`` mirrors the
        folder structure and two ``take.wav`` in different subfolders do not collide.
    failures : specs that name nothing usable (missing file, glob matching nothing, folder with no audio).
    """
    inputs: list[tuple[Path, Path]] = []
    failures: list[Failure] = []
    seen: set[Path] = set()

    def add(p: Path, rel: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            inputs.append((p, rel))

    def add_dir(d: Path) -> int:
        n = 0
        for root, dirs, files in os.walk(d):
            dirs.sort()
            for name in sorted(files):
                p = Path(root) / name
                if p.suffix.lower() in AUDIO_EXTENSIONS and not name.startswith("."):
                    add(p, p.parent.relative_to(d))
                    n += 1
        return n

    for spec in specs:
        if _is_glob(spec) and not Path(spec).exists():
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                failures.append(Failure(spec, "no file matches this pattern"))
                continue
            for m in matches:
                p = Path(m)
                if p.is_dir():
                    if add_dir(p) == 0:
                        failures.append(Failure(m, "folder holds no audio files (" + _ext_list() + ")"))
                elif p.suffix.lower() in AUDIO_EXTENSIONS:
                    add(p, Path())
            continue
        p = Path(spec)
        if p.is_dir():
            if add_dir(p) == 0:
                failures.append(Failure(spec, "folder holds no audio files (" + _ext_list() + ")"))
        elif p.exists():
            add(p, Path())
        else:
            failures.append(Failure(spec, "no such file or folder"))
    return inputs, failures


def _ext_list() -> str:
    return ", ".join(sorted(e.lstrip(".") for e in AUDIO_EXTENSIONS))


def plan_jobs(inputs: Iterable[tuple[Path, Path]], out_dir: str | Path | None, formats: Sequence[str],
              piano_roll: bool) -> tuple[list[Job], list[Failure]]:
    """Output paths for every input: ``OUT/<relative folder>/<stem>.<ext>`` (next to the input without ``OUT``).

    Two inputs that would write the same output (``a.wav`` and ``a.flac`` in one folder) are a failure for the
    second, never a silent overwrite.
    """
    jobs, failures = [], []
    claimed: dict[Path, Path] = {}
    exts = list(dict.fromkeys(formats)) + (["png"] if piano_roll else [])
    for audio, rel in inputs:
        folder = (Path(out_dir) / rel) if out_dir is not None else audio.parent
        outputs = {ext: folder / f"{audio.stem}.{ext}" for ext in exts}
        clash = next((claimed[o.resolve()] for o in outputs.values() if o.resolve() in claimed), None)
        if clash is not None:
            failures.append(Failure(str(audio), f"its output would overwrite that of {clash} (same name); "
                                                "transcribe them into different folders"))
            continue
        for o in outputs.values():
            claimed[o.resolve()] = audio
        jobs.append(Job(audio, outputs, str(audio)))
    return jobs, failures


# ---------------------------------------------------------------------------------------------------------------
# Transcribing one file (streamed)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Transcription:
    """What a file gave: its notes (a sequence of ``models.notes.Note``), its length and, if asked, its waveform
    envelope."""
    notes: NoteRows
    seconds: float
    envelope: "object | None" = None  # (n_frames, 2) float32 min/max per hop [model-rate samples], or None
    warnings: list = field(default_factory=list)  # one sentence each (e.g. the file stops decoding part-way)


class _Envelope:
    """Min/max of the model-rate signal per hop, accumulated block by block (for the piano-roll plot)."""

    def __init__(self, hop: int):
        import numpy as np

        self.hop = hop
        self._rest = np.zeros(0, np.float32)
        self._parts: list = []

    def process(self, x) -> None:
        import numpy as np

        x = np.concatenate([self._rest, x]) if len(self._rest) else x
        n = len(x) // self.hop * self.hop
        if n:
            f = x[:n].reshape(-1, self.hop)
            self._parts.append(np.stack([f.min(axis=1), f.max(axis=1)], axis=1).astype(np.float32))
        self._rest = np.array(x[n:], np.float32)

    def result(self):
        import numpy as np

        if len(self._rest):
            self._parts.append(np.array([[self._rest.min(), self._rest.max()]], np.float32))
            self._rest = self._rest[:0]
        return np.concatenate(self._parts) if self._parts else np.zeros((0, 2), np.float32)


class NoteRows(Sequence):
    """Notes kept as 32 bytes each (an ``(n, 4)`` float64 array of pitch, onset [s], offset [s], velocity), made
    into :class:`models.notes.Note` objects only when accessed: an hour of dense music is ~10^5..10^6 notes, which as
    Python objects would cost hundreds of MB.

    Built by :class:`_NoteCollector`; sorted by (onset, pitch, offset) like :func:`models.notes.events_to_notes`.
    """

    def __init__(self, rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        from kkoma.models.notes import Note

        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        p, on, off, v = self.rows[i]
        return Note(int(p), float(on), float(off), int(v))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"NoteRows({len(self)} notes)"


class _NoteCollector:
    """Pairs note events into notes as they arrive (the rules of :func:`models.notes.events_to_notes`), keeping
    only the open notes as objects and the finished ones as compact rows."""

    def __init__(self):
        import array

        self._rows = array.array("d")
        self._open: dict = {}

    def add(self, events) -> None:
        rows, open_ = self._rows, self._open
        for e in events:
            prev = open_.pop(e.pitch, None)
            if e.kind == "on":
                if prev is not None:
                    rows.extend((prev.pitch, prev.time, e.time, prev.velocity))
                open_[e.pitch] = e
            elif e.kind == "off":
                if prev is not None:
                    rows.extend((prev.pitch, prev.time, max(e.time, prev.time), prev.velocity))
            else:
                raise ValueError(f"unknown NoteEvent kind {e.kind!r}")

    def result(self) -> NoteRows:
        """The finished notes (notes still open are dropped, as events_to_notes does; flush() leaves none)."""
        import numpy as np

        r = np.frombuffer(self._rows, dtype=np.float64).reshape(-1, 4) if len(self._rows) else np.zeros((0, 4))
        order = np.lexsort((r[:, 2], r[:, 0], r[:, 1]))
        return NoteRows(np.ascontiguousarray(r[order]))


def transcribe_file(path: str | Path, settings, transcriber=None, *,
                    progress: Callable[[float], None] | None = None,
                    should_stop: Callable[[], bool] | None = None,
                    envelope: bool = False, threaded: bool = True) -> Transcription:
    """Transcribe one audio file in bounded memory.

    The file is decoded and resampled in blocks of ``transcribe.chunk_frames`` hops and each block goes through the
    streaming ``transcriber`` (reset first, so state never leaks between files).

    Parameters
    ----------
    path : audio file (anything soundfile decodes; other formats through the decoder's fallback), any rate and
        channel count (mixed to mono).
    transcriber : a :class:`models.pipeline.Transcriber` to reuse, or None to build one.
    progress : called with the seconds of audio [s] each block covered.
    should_stop : polled between blocks; True aborts with :class:`Interrupted`.
    envelope : also return the ``(n_frames, 2)`` min/max waveform envelope (for ``--piano-roll``).
    threaded : decode, transform and model in three threads, one block apart (:meth:`Transcriber.stream`): one
        file keeps two cores busy. Runs with one core per file (:class:`Layout`) pass False.

    Raises
    ------
    KkomaError : missing, unreadable, corrupt file, or NaN/Inf samples (the message names the file).
    """
    from kkoma.models.audio import stream_audio

    sr, hop = settings.audio.sample_rate, settings.audio.hop_length
    if transcriber is None:
        transcriber = make_transcriber(settings)
    transcriber.reset()
    block_samples = settings.transcribe.chunk_frames * hop
    env = _Envelope(hop) if envelope else None
    notices: list[str] = []

    def pieces():
        for block in stream_audio(path, settings, block_seconds=block_samples / sr, on_warning=notices.append):
            # The resampler may hand out a little more than asked; keep every push within chunk_frames.
            for i in range(0, len(block), block_samples):
                piece = block[i:i + block_samples]
                if env is not None:
                    env.process(piece)
                yield piece

    notes = _NoteCollector()
    n_samples = 0
    if hasattr(transcriber, "stream"):
        stream = transcriber.stream(pieces(), threaded=threaded)
    else:  # any object with process/flush (a custom factory's transcriber): one thread
        from kkoma.models.pipeline import plain_stream

        stream = plain_stream(transcriber, pieces())
    try:
        for events, n in stream:
            notes.add(events)
            n_samples += n
            if progress is not None and n:
                progress(n / sr)
            if should_stop is not None and should_stop():
                raise Interrupted()
    finally:
        stream.close()
    return Transcription(notes=notes.result(), seconds=n_samples / sr, envelope=env.result() if env is not None else None,
                         warnings=notices)


# ---------------------------------------------------------------------------------------------------------------
# Writing outputs (atomic)
# ---------------------------------------------------------------------------------------------------------------
def notes_csv(notes) -> str:
    """CSV text: header ``onset,offset,pitch,velocity``; times in seconds."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["onset", "offset", "pitch", "velocity"])
    for n in notes:
        w.writerow([f"{n.onset:.6f}", f"{n.offset:.6f}", int(n.pitch), int(n.velocity)])
    return buf.getvalue()


def notes_json(notes, audio: str, seconds: float) -> str:
    """JSON text: ``{"audio", "seconds", "notes": [{"onset", "offset", "pitch", "velocity"}, ...]}`` (times [s])."""
    return json.dumps({
        "audio": audio,
        "seconds": round(seconds, 6),
        "notes": [{"onset": round(float(n.onset), 6), "offset": round(float(n.offset), 6), "pitch": int(n.pitch),
                   "velocity": int(n.velocity)} for n in notes],
    }, indent=1) + "\n"


def write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_piano_roll(path: Path, result: Transcription, settings, title: str = "") -> None:
    """PNG: the waveform envelope above the piano roll (notes coloured by velocity), on one time axis [s]."""
    from kkoma.models.errors import require

    matplotlib = require("matplotlib", "--piano-roll")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.collections import PolyCollection

    fr = settings.audio.frame_rate
    seconds = max(result.seconds, 1e-3)
    width = float(min(40.0, max(8.0, seconds / 5.0)))
    fig, (ax_w, ax_r) = plt.subplots(2, 1, figsize=(width, 6.5), sharex=True, layout="constrained",
                                     gridspec_kw={"height_ratios": [1, 3]})
    try:
        env = result.envelope if result.envelope is not None else np.zeros((0, 2), np.float32)
        if len(env):
            # At most ~4000 columns: a long file's envelope is reduced by taking min/max over groups of frames.
            step = max(1, int(np.ceil(len(env) / 4000)))
            n = len(env) // step * step
            lo = env[:n, 0].reshape(-1, step).min(axis=1)
            hi = env[:n, 1].reshape(-1, step).max(axis=1)
            t = np.arange(len(lo)) * step / fr
            ax_w.fill_between(t, lo, hi, color="0.35", linewidth=0)
        ax_w.set_ylabel("waveform")
        ax_w.set_ylim(-1.05, 1.05)
        ax_w.set_title(title)
        polys, colours = [], []
        for n in result.notes:
            polys.append([(n.onset, n.pitch - 0.4), (n.offset, n.pitch - 0.4), (n.offset, n.pitch + 0.4),
                          (n.onset, n.pitch + 0.4)])
            colours.append(n.velocity / 127.0)
        if polys:
            pc = PolyCollection(polys, array=np.asarray(colours), cmap="viridis", clim=(0, 1), linewidths=0)
            ax_r.add_collection(pc)
            # On both axes, so the waveform and the roll keep one time axis of the same width.
            fig.colorbar(pc, ax=(ax_w, ax_r), pad=0.01, fraction=0.02, label="velocity / 127")
        ax_r.set_xlim(0, seconds)
        ax_r.set_ylim(20, 109)
        ax_r.set_ylabel("MIDI pitch")
        ax_r.set_xlabel("time [s]")
        ax_r.grid(axis="y", color="0.9", linewidth=0.5)
        _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be made in it; KkomaError naming it otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".kkoma-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise KkomaError(f"cannot write to the output folder {folder} ({e.strerror or e})") from None


def write_outputs(job: Job, result: Transcription, settings) -> list[str]:
    """Every requested output of ``job``, each written atomically, the piano roll last. Returns warnings: a piano
    roll that cannot be drawn is one (the notes are written, so the file is not failed)."""
    from kkoma.models.notes import write_midi

    notices = []
    for ext, path in sorted(job.outputs.items(), key=lambda item: item[0] == "png"):
        if ext == "mid":
            write_midi(result.notes, path, settings)
        elif ext == "csv":
            write_text(path, notes_csv(result.notes))
        elif ext == "json":
            write_text(path, notes_json(result.notes, job.audio.name, result.seconds))
        elif ext == "png":
            try:
                write_piano_roll(path, result, settings, title=job.audio.name)
            except Exception as e:
                why = str(e).rstrip(".") if isinstance(e, KkomaError) else f"{type(e).__name__}: {e}"
                notices.append(f"no piano roll ({why}); the notes are written: add it with --overwrite")
    return notices


# ---------------------------------------------------------------------------------------------------------------
# Running many files
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class FileOutcome:
    """The result of one job: ``status`` is ``done`` / ``failed``; ``reason`` says why for a failure."""
    audio: str
    status: str
    seconds: float = 0.0
    n_notes: int = 0
    elapsed: float = 0.0
    reason: str = ""
    warnings: list = field(default_factory=list)  # for a done file: what it lacks (one sentence each)


@dataclass
class RunSummary:
    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    wall: float = 0.0

    @property
    def audio_seconds(self) -> float:
        return sum(o.seconds for o in self.done)


def run_job(job: Job, settings, transcriber=None, *, progress=None, should_stop=None,
            threaded: bool = True) -> FileOutcome:
    """Transcribe one file and write its outputs; any failure becomes a ``failed`` outcome with one-line reason."""
    t0 = time.perf_counter()
    try:
        for folder in {p.parent for p in job.outputs.values()}:
            check_writable(folder)
        with warnings.catch_warnings():
            # The decoder's fallback (audioread via librosa) warns as it tries; the outcome line says what happened.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            result = transcribe_file(job.audio, settings, transcriber, progress=progress,
                                     should_stop=should_stop, envelope="png" in job.outputs, threaded=threaded)
        notices = result.warnings + write_outputs(job, result, settings)
        return FileOutcome(job.display, "done", result.seconds, len(result.notes), time.perf_counter() - t0,
                           warnings=[_strip_name(n, job) for n in notices])
    except (Interrupted, KeyboardInterrupt):
        raise
    except KkomaError as e:
        return FileOutcome(job.display, "failed", reason=_strip_name(str(e), job), elapsed=time.perf_counter() - t0)
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return FileOutcome(job.display, "failed", reason=f"{e.strerror or e}{where}",
                           elapsed=time.perf_counter() - t0)
    except Exception as e:  # a bug: keep the traceback, but the other files still get done
        traceback.print_exc(file=sys.stderr)
        return FileOutcome(job.display, "failed", reason=f"internal error {type(e).__name__}: {e}",
                           elapsed=time.perf_counter() - t0)


def _strip_name(message: str, job: Job) -> str:
    """Messages from the decoder start with the path; the report line names the file already."""
    msg = message.rstrip(".")
    for prefix in (str(job.audio) + " ", job.display + " "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
            return msg[3:] if msg.startswith("is ") else msg
    return msg


# ---------------------------------------------------------------------------------------------------------------
# How many processes: the layout
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """How a run uses the machine: ``processes`` worker processes (1 = the calling process alone), each streaming
    one file at a time; ``threaded``: in three threads, one block apart (decoding, the transform, the model and
    tracker: :meth:`models.pipeline.Transcriber.stream`), else in one."""
    processes: int
    threaded: bool
    cores: int  # the cores it was chosen for

    def describe(self) -> str:
        where = "1 process" if self.processes == 1 else f"{self.processes} processes"
        return f"{where} x {3 if self.threaded else 1} thread{'s' if self.threaded else ''} on {self.cores} " \
               f"core{'s' if self.cores != 1 else ''}"


def choose_layout(cores: int, n_files: int, jobs: int = 0) -> Layout:
    """The layout for ``n_files`` files on ``cores`` usable cores; ``jobs`` > 0 fixes the number of processes.

    A file streamed in threads keeps two cores busy: its three stages (decoding, the transform, the model) cost
    about the same CPU time (benchmarks/profile_transcribe.py), so one process on two cores comes close to what two
    one-thread processes could do at best, without a second process's start-up (imports, model loading: -j 2 took
    about 40 % more CPU time for five one-minute files, benchmarks/results/jobs_layout.md) and memory. So the
    automatic rule (``jobs`` = 0) gives every process two cores: one process on one to three cores, a second one
    from four cores on, and never more processes than files. Whatever fixed the number of processes, a process
    streams in threads only when there are two cores for each process.
    """
    cores, n_files = max(1, int(cores)), max(1, int(n_files))
    processes = min(jobs, n_files) if jobs > 0 else max(1, min(n_files, cores // 2))
    return Layout(processes=processes, threaded=cores >= 2 * processes, cores=cores)


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup") \
        -> float | None:
    """The CPU quota [cores] of this process's control group (a container's ``--cpus``), None when there is none.

    cgroup v2: ``cpu.max`` (``"200000 100000"`` = 2 cores, ``"max 100000"`` = no limit); v1: ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` (quota -1 = no limit). The group and each of its parents are read; the tightest wins.
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    root = Path(root)
    limits: list[float] = []

    def folders(base: Path, rel: str):
        parts = [p for p in rel.strip("/").split("/") if p]
        for i in range(len(parts), -1, -1):
            yield base.joinpath(*parts[:i])

    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hid, controllers, rel = fields
        if hid == "0" and controllers == "":
            for d in folders(root, rel):
                try:
                    quota, period = (d / "cpu.max").read_text().split()[:2]
                except (OSError, ValueError):
                    continue
                if quota != "max" and float(period) > 0:
                    limits.append(float(quota) / float(period))
        elif "cpu" in controllers.split(","):
            for base in dict.fromkeys([root / controllers, root / "cpu", root / "cpu,cpuacct"]):
                for d in folders(base, rel):
                    try:
                        quota = float((d / "cpu.cfs_quota_us").read_text())
                        period = float((d / "cpu.cfs_period_us").read_text())
                    except (OSError, ValueError):
                        continue
                    if quota > 0 and period > 0:
                        limits.append(quota / period)
    return min(limits) if limits else None


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity (``taskset``, a cpuset) capped by a cgroup quota, rounded
    to the nearest whole core (at least 1): a quota of 1.5 cores still gives the threads of one file half a core
    more."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, int(quota + 0.5))
    return max(1, cores)


def resolve_layout(settings, n_files: int, n_jobs: int | None = None) -> Layout:
    """The layout for a run: ``n_jobs`` if given, else ``transcribe.jobs`` (0 = automatic), on :func:`usable_cores`."""
    jobs = settings.transcribe.jobs if n_jobs is None else n_jobs
    return choose_layout(usable_cores(), n_files, int(jobs or 0))


# ---------------------------------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------------------------------
# Worker-process state (set by _init_worker; one Transcriber per worker, reused across its files).
_W: dict = {}

# Imported once in the pool's fork server, so each worker starts without importing them again.
_PRELOAD = ["numpy", "numba", "kkoma.models.pipeline", "kkoma.models.inference", "kkoma.models.cqt",
            "kkoma.models.audio", "kkoma.offline.transcribe"]


def _init_worker(settings, progress_queue, stop_event, factory, threaded) -> None:
    # Ctrl-C is ignored in workers (offline.pool): the parent decides and tells them through stop_event, so a worker
    # is never killed in the middle of writing an output.
    _W.update(settings=settings, queue=progress_queue, stop=stop_event, transcriber=None, factory=factory,
              threaded=threaded)


def _worker_job(job: Job) -> FileOutcome:
    s = _W["settings"]
    if _W["transcriber"] is None:
        _W["transcriber"] = (_W["factory"] or make_transcriber)(s)
    q, stop = _W["queue"], _W["stop"]
    pending = [0.0]

    def progress(sec: float) -> None:
        pending[0] += sec
        if pending[0] >= 1.0:
            q.put(pending[0])
            pending[0] = 0.0

    try:
        return run_job(job, s, _W["transcriber"], progress=progress, should_stop=stop.is_set,
                       threaded=_W["threaded"])
    except Interrupted:
        return FileOutcome(job.display, "interrupted")
    finally:
        if pending[0]:
            q.put(pending[0])


def run_jobs(jobs: Sequence[Job], settings, *, n_jobs: int | None = None, layout: Layout | None = None,
             progress=None, on_outcome: Callable[[FileOutcome], None] | None = None,
             factory=None) -> list[FileOutcome]:
    """Run ``jobs`` in ``layout`` (default :func:`resolve_layout` with ``n_jobs``), reporting each outcome as it
    arrives.

    ``progress(seconds)`` is called as audio is consumed; ``on_outcome(outcome)`` once per file. Ctrl-C stops every
    worker at its next block (no output of an unfinished file is written) and re-raises KeyboardInterrupt.
    ``factory(settings)`` builds the streaming transcriber (default :func:`make_transcriber`; it must be picklable,
    i.e. a module-level callable, to reach the worker processes).
    """
    factory_ = factory or make_transcriber
    layout = layout or resolve_layout(settings, len(jobs), n_jobs)
    outcomes: list[FileOutcome] = []

    def report(o: FileOutcome) -> None:
        outcomes.append(o)
        if on_outcome is not None:
            on_outcome(o)

    if layout.processes <= 1 or len(jobs) <= 1:
        # A problem every file would share (missing weights, bad model settings) fails the run here, once.
        transcriber = factory_(settings) if jobs else None
        for job in jobs:
            report(run_job(job, settings, transcriber, progress=progress, threaded=layout.threaded))
        return outcomes

    import queue as queue_mod

    from kkoma.offline.pool import pool_context, run_pool

    # Fail fast in the parent on problems every file would share (missing weights, bad model settings).
    factory_(settings)
    ctx = pool_context(_PRELOAD)
    q, stop = ctx.Queue(), ctx.Event()

    def drain() -> None:
        while True:
            try:
                sec = q.get_nowait()
            except queue_mod.Empty:
                return
            if progress is not None:
                progress(sec)

    def on_result(job: Job, o: FileOutcome) -> None:
        if o.status != "interrupted":  # stopped by Ctrl-C: nothing written, nothing to report
            report(o)

    def on_error(job: Job, e: BaseException) -> FileOutcome:  # a worker died (killed, out of memory)
        return FileOutcome(job.display, "failed", reason=f"worker process failed ({type(e).__name__}: {e})")

    run_pool(_worker_job, jobs, workers=layout.processes, on_result=on_result, on_error=on_error,
             initializer=_init_worker, initargs=(settings, q, stop, factory, layout.threaded), preload=_PRELOAD,
             on_poll=drain, poll_s=0.2, on_interrupt=stop.set)
    return outcomes


def transcribe_paths(specs: Sequence[str], settings, *, out_dir=None, formats: Sequence[str] = ("mid",),
                     piano_roll: bool = False, overwrite: bool = False, quiet: bool = False,
                     n_jobs: int | None = None, layout: Layout | None = None, stream=None,
                     factory=None, scheduler: str | None = None) -> RunSummary:
    """The whole ``kkoma transcribe`` run: find inputs, plan outputs, skip existing, transcribe, print a summary.

    ``scheduler``: run the files on a Dask cluster (:mod:`offline.cluster`: ``tcp://host:port`` or ``local:N``)
    instead of this machine's processes (``n_jobs`` / ``layout``).

    Per-file problems are reported one line each on ``stream`` (stderr by default) and collected in the summary.
    """
    stream = stream or sys.stderr
    t0 = time.perf_counter()
    summary = RunSummary()
    inputs, failures = find_inputs(specs)
    jobs, clash = plan_jobs(inputs, out_dir, formats, piano_roll)
    failures += clash

    def say(line: str) -> None:
        if bar is not None:
            bar.write(line, file=stream)
        else:
            print(line, file=stream)

    bar = None
    for f in failures:
        summary.failed.append(FileOutcome(f.path, "failed", reason=f.reason))
    todo = []
    for job in jobs:
        existing = [p for p in job.outputs.values() if p.exists()]
        if existing and not overwrite:
            summary.skipped.append(FileOutcome(job.display, "skipped",
                                               reason=f"{existing[0]} exists (use --overwrite to replace it)"))
        else:
            todo.append(job)
    for o in summary.skipped:  # even with --quiet: silently not doing what was asked would confuse
        print(f"skipped {o.audio}: {o.reason}", file=stream)
    for o in summary.failed:
        print(f"failed {o.audio}: {o.reason}", file=stream)

    if todo:
        from kkoma.models.audio import audio_info

        expected: dict[str, float] = {}
        for job in todo:
            try:
                with warnings.catch_warnings():  # the audioread fallback warns while it probes
                    warnings.simplefilter("ignore")
                    expected[job.display] = audio_info(job.audio)[2]
            except KkomaError:
                expected[job.display] = 0.0
        total = sum(expected.values())
        if not quiet:
            from tqdm import tqdm

            bar = tqdm(total=round(total, 1), unit="s", unit_scale=False, file=stream, dynamic_ncols=True,
                       desc=f"0/{len(todo)} files", bar_format="{desc} {percentage:3.0f}%|{bar}| "
                       "{n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}, {rate_fmt}]")
        done_count = [0]

        def progress(sec: float) -> None:
            if bar is not None:
                bar.update(min(sec, max(0.0, bar.total - bar.n)))

        def on_outcome(o: FileOutcome) -> None:
            done_count[0] += 1
            if bar is not None:
                bar.set_description_str(f"{done_count[0]}/{len(todo)} files")
            if o.status == "done":
                summary.done.append(o)
                if not quiet:
                    say(f"{o.audio}: {o.n_notes} notes, {o.seconds:.1f} s of audio in {o.elapsed:.1f} s")
                for w in o.warnings:  # even with --quiet, as skipped files are
                    say(f"warning {o.audio}: {w}")
            else:
                summary.failed.append(o)
                say(f"failed {o.audio}: {o.reason}")
                progress(expected.get(o.audio, 0.0))  # what it would have covered; the bar is clipped at total

        try:
            if scheduler:
                from kkoma.offline.cluster import run_jobs_cluster

                run_jobs_cluster(todo, settings, scheduler, progress=progress, on_outcome=on_outcome, factory=factory)
            else:
                run_jobs(todo, settings, n_jobs=n_jobs, layout=layout, progress=progress, on_outcome=on_outcome,
                         factory=factory)
            # Every file has ended: what a worker killed mid-write left beside its outputs is stale.
            for job in todo:
                for out in job.outputs.values():
                    remove_stale_temps(Path(out).resolve())
        finally:
            if bar is not None:
                bar.close()
    summary.wall = time.perf_counter() - t0
    if not quiet or summary.failed:
        print(format_summary(summary), file=stream)
    return summary


def format_summary(s: RunSummary) -> str:
    """One line: files done/skipped/failed, hours of audio, wall time and speed (× real time)."""
    hours = s.audio_seconds / 3600.0
    speed = f", {s.audio_seconds / s.wall:.1f}× real time" if s.wall > 0 and s.audio_seconds > 0 else ""
    return (f"{len(s.done)} transcribed, {len(s.skipped)} skipped, {len(s.failed)} failed; "
            f"{hours:.3f} h of audio in {s.wall:.1f} s{speed}")
