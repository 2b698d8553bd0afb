"""``kkoma live``, ``kkoma record`` and ``kkoma devices``.

Only the standard library (and kkoma's settings/errors) is imported here at module level so ``kkoma --help`` stays
instant; numpy, sounddevice, rtmidi and the pipeline load inside the ``run_*`` functions.

``kkoma record`` sends the live model's notes to the port and writes the files model's notes (``--notes files``,
the default: the offline settings' model, its own transform and tracker, fed the same audio by the engine) to the
file, which therefore holds what ``kkoma transcribe`` would write for the same audio; an existing file is replaced
only with ``--overwrite``. ``--synth`` plays the notes sent through FluidSynth (realtime/synth.py).

Stopping: Ctrl-C (SIGINT), SIGTERM and SIGHUP (the terminal closed) end a session the same way: the processing thread flushes the transcriber
(closing sounding notes), every note gets its note-off on the MIDI port, the recording is finalised, and the command
exits 0. A fault (no device, device lost, MIDI port gone, disk full...) prints one sentence and exits 1, after the
same clean-up, keeping the recording as far as it got.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading

from kkoma.models.errors import KkomaError

_API_CHOICES = ("auto", "alsa", "jack", "coremidi", "winmm")


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, turned into the Ctrl-C path."""


#: Signals that end a session like Ctrl-C (all notes off, recording kept); SIGHUP does not exist on Windows.
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------
def _add_session_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("audio input")
    g.add_argument("--device", metavar="DEV", default=None,
                   help="input device: index or (partial) name (default: live.device, else the system default)")
    g.add_argument("--channels", type=int, metavar="N", default=None,
                   help="input channels to open, mixed to mono (default: live.channels; 0 = all)")
    g.add_argument("--rate", type=int, metavar="HZ", default=None,
                   help="device sample rate (default: live.device_rate; 0 = the device's default)")
    g.add_argument("--input", metavar="FILE", default=None,
                   help="stream an audio file through the live engine instead of a device")
    g.add_argument("--speed", choices=("realtime", "max"), default="realtime",
                   help="pace of --input: realtime (like a sound card, default) or max (as fast as possible)")
    g.add_argument("--duration", type=float, metavar="SECONDS", default=None,
                   help="stop after this much input (default: until Ctrl-C, or the end of --input)")
    g = p.add_argument_group("MIDI output")
    g.add_argument("--midi-port", metavar="NAME", default=None,
                   help="connect to this existing output port (partial, case-insensitive) instead of opening a "
                        "virtual port named midi.port_name")
    g.add_argument("--midi-api", choices=_API_CHOICES, default=None,
                   help="MIDI system (default: midi.api; auto tries ALSA, then JACK on Linux)")
    g.add_argument("--no-midi", action="store_true", help="send no MIDI")
    g = p.add_argument_group("built-in synth")
    g.add_argument("--synth", nargs="?", const="", default=None, metavar="SOUNDFONT",
                   help="play the notes sent through FluidSynth on an audio output, with this .sf2/.sf3 (default: "
                        "the first of synth.soundfonts found, e.g. Debian's FluidR3_GM); needs pyfluidsynth")
    g.add_argument("--synth-device", metavar="DEV", default=None,
                   help="the synth's output device, as its driver names it (default: synth.device, else the "
                        "driver's default; with JACK the server name)")
    g = p.add_argument_group("output and display")
    g.add_argument("--events-jsonl", metavar="FILE", default=None,
                   help="write one JSON line per MIDI event sent (type, pitch, velocity, t_emit, t_note [s])")
    g.add_argument("--stats-json", metavar="FILE", default=None,
                   help="write the latency budget, per-hop compute time (p50/p99/max), hops and overflows at exit")
    g.add_argument("-q", "--quiet", action="store_true", help="no terminal display and no start-up line")


def add_live_arguments(p: argparse.ArgumentParser) -> None:
    _add_session_arguments(p)


def add_record_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT.mid", help="MIDI file to write (kept valid on disk at every moment)")
    p.add_argument("--audio", metavar="OUT.wav", default=None,
                   help="also write the input audio (mono, at the device rate) to this file")
    p.add_argument("--notes", choices=("files", "live"), default="files",
                   help="what the file gets: files = the files model's notes (offline, or --files-model; run beside "
                        "the live one on the same audio: more accurate, written behind the port, 0.28 s for offline; "
                        "default), live = exactly the notes sent to the MIDI port")
    p.add_argument("--files-model", metavar="NAME|FILE", default=None,
                   help="the model whose notes the file gets (--notes files), as `kkoma transcribe --model` takes "
                        "it: a shipped one by name (`kkoma models`, e.g. pitch) or a weights file (default: the "
                        "files model, offline); --model stays the live one, for the port, and so do "
                        "model.weights, model.ensemble and model.ensemble_weights of --set and --config")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT.mid (and the --audio file) if they exist; without it an existing file is an error")
    _add_session_arguments(p)


def add_devices_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


# ---------------------------------------------------------------------------------------------------------------
# Display
# ---------------------------------------------------------------------------------------------------------------
class _Display:
    """One terminal line, rewritten in place: keys sounding, input level, latency budget, compute, overflows."""

    def __init__(self, enabled: bool, stream=None):
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self._width = 0

    def update(self, engine) -> None:
        if not self.enabled:
            return
        from kkoma.realtime.engine import note_name

        try:  # the processing thread changes this set while we read it
            sounding = sorted(tuple(engine.midi.sounding))
        except RuntimeError:
            sounding = []
        keys = " ".join(note_name(p) for p in sounding) or "-"
        if len(keys) > 40:
            keys = keys[:37] + "..."
        level = f"{engine.level_db:5.0f} dB" if math.isfinite(engine.level_db) else " -inf dB"
        ring = engine.source.ring
        t = engine.stats.last
        last = f"{1000 * t:4.1f}" if t is not None else "   -"
        line = (f"{engine.t_emit:7.1f} s | keys {keys:<40} | in {level} | budget {engine.budget['total_ms']:.0f} ms"
                f" | hop {last} ms | overflows {ring.overflows + getattr(engine.source, 'overflows', 0)}")
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self._write("\r" + line + " " * pad)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal is gone (SIGHUP): the session goes on without a display
            self.enabled = False

    def close(self) -> None:
        if self.enabled and self._width:
            self._write("\n")


def _budget_line(engine) -> str:
    b = engine.budget
    parts = " + ".join(f"{k[:-3].replace('_', ' ')} {v:.1f}" for k, v in b.items() if k != "total_ms")
    off = getattr(engine.transcriber, "note_off_delay_ms", 0.0)
    offs = f"; note-offs up to {off:.0f} ms later (tracker.offset_hold_ms)" if off else ""
    line = (f"latency budget {b['total_ms']:.1f} ms = {parts} (plus compute){offs}; input {engine.source.name} at "
            f"{engine.source.sample_rate} Hz, {engine.source.channels} ch; MIDI {engine.midi.port_name} "
            f"({engine.midi.api})")
    synth_ms = getattr(engine.midi, "latency_ms", None)
    if synth_ms is not None:
        line += (f"; through the synth {b['total_ms'] + synth_ms:.1f} ms to sound (+ {synth_ms:.1f} ms output "
                 "buffer; plus compute and the sound card's own buffers)")
    if engine.recorder is not None:
        ft = engine.file_transcriber
        if ft is None:
            line += "; the file gets the notes sent"
        else:
            fb = getattr(ft, "latency_budget", None)
            behind = f", {fb()['total_ms']:.0f} ms behind" if callable(fb) else ""
            name = getattr(getattr(ft, "settings", None), "model", None)
            name = f" ({name.name})" if name is not None else ""
            line += f"; the file gets the files model's notes{name}{behind} (--notes live: the notes sent)"
    return line


# ---------------------------------------------------------------------------------------------------------------
# Session
# ---------------------------------------------------------------------------------------------------------------
def _file_settings(args, settings):
    """The settings of the model whose notes ``kkoma record`` writes (``--notes files``): the files' ones (config.toml's
    transcribe.overrides under the user's --config and --set, as `kkoma transcribe` gets them; with ``--files-model``
    that model's, as `kkoma transcribe --model` gets them), or None when they are the live ones (the file would get
    the same notes). model.weights, model.ensemble and model.ensemble_weights in --config or --set are the live
    model's."""
    from kkoma.models.settings import load_settings

    files_model = getattr(args, "files_model", None)
    if getattr(args, "notes", "live") != "files":
        if files_model is not None:
            raise KkomaError("--files-model chooses the model of the file's notes, but --notes live writes the notes "
                             "sent to the port: give one of them.")
        return None
    files = load_settings(getattr(args, "config", None), getattr(args, "overrides", ()), offline=True,
                          model=files_model, network_keys=False)
    return None if files == settings else files


def _session(args, settings, record_path=None, audio_path=None) -> int:
    from kkoma.realtime.audio_in import AudioInput, FileInput
    from kkoma.realtime.engine import Engine, make_live_transcriber, make_record_transcriber
    from kkoma.realtime.midi_out import MidiOut, NullMidiOut
    from kkoma.realtime.recorder import Recorder

    if args.duration is not None and not args.duration > 0:
        raise KkomaError(f"--duration must be a positive number of seconds, not {args.duration}.")
    prev_term: dict = {}
    if threading.current_thread() is threading.main_thread():
        def _on_term(signum, frame):
            raise _Terminated()
        prev_term = {sig: signal.signal(sig, _on_term) for sig in _STOP_SIGNALS}

    quiet = args.quiet
    display = _Display(settings.live.display and not quiet and sys.stdout.isatty())
    source = midi = recorder = jsonl = engine = None
    error: BaseException | None = None
    try:
        # The order matters for the clean-up below: whatever was opened is closed, in reverse.
        transcriber = make_live_transcriber(settings)
        file_settings = _file_settings(args, settings) if record_path is not None else None
        file_transcriber = make_record_transcriber(file_settings) if file_settings is not None else None
        if args.input:
            source = FileInput(settings, args.input, speed=args.speed)
        else:
            source = AudioInput(settings, device=args.device, channels=args.channels, sample_rate=args.rate)
        midi = NullMidiOut(settings) if args.no_midi else MidiOut(settings, args.midi_port, args.midi_api)
        if args.synth is not None or args.synth_device is not None:
            from kkoma.realtime.synth import SynthOut

            midi = SynthOut(settings, midi, soundfont=args.synth or None, device=args.synth_device)
            if not quiet:
                print(f"kkoma {args.command}: {midi.describe()}", file=sys.stderr, flush=True)
        if record_path is not None:
            recorder = Recorder(record_path, settings, audio_path=audio_path, audio_rate=source.sample_rate)
        if args.events_jsonl:
            try:
                jsonl = open(args.events_jsonl, "w", encoding="utf-8", buffering=1)
            except OSError as e:
                raise KkomaError(f"cannot write {args.events_jsonl} ({e.strerror or e}).") from None
        engine = Engine(settings, source, midi, transcriber=transcriber, recorder=recorder, events_jsonl=jsonl,
                        duration=args.duration, file_transcriber=file_transcriber)
        if not quiet:
            print(f"kkoma {args.command}: {_budget_line(engine)}", file=sys.stderr, flush=True)
        engine.start()
        period = 1.0 / settings.live.display_hz
        try:
            while engine.running:
                engine.join(period)
                display.update(engine)
                if recorder is not None:
                    recorder.autosave()
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP: the normal way to end a live session
            pass
        engine.stop()
        engine.join(file=False)  # every note has gone to the port; the file's last notes: _cleanup
        if engine.error is not None:
            raise engine.error
    except BaseException as e:
        error = e
    finally:
        # Never interrupted half-way: a second Ctrl-C/SIGTERM/SIGHUP during clean-up is ignored.
        try:
            old_int = signal.signal(signal.SIGINT, signal.SIG_IGN) if prev_term else None
        except ValueError:
            old_int = None
        for sig in prev_term:
            signal.signal(sig, signal.SIG_IGN)
        try:
            error = _cleanup(engine, source, midi, recorder, jsonl, display, args, error)
        finally:
            for sig, handler in prev_term.items():
                signal.signal(sig, handler)
            if old_int is not None:
                signal.signal(signal.SIGINT, old_int)
    if error is not None:
        raise error
    return 0


def _say(*args, **kw) -> None:
    """print() that outlives a closed terminal (after SIGHUP a write to it may fail; the clean-up must go on)."""
    try:
        print(*args, **kw)
    except (OSError, ValueError):
        pass


def _cleanup(engine, source, midi, recorder, jsonl, display, args, error):
    """Stop everything in order; returns the error to report (the first one)."""
    from kkoma.realtime.audio_in import InputLost

    def keep(e):
        nonlocal error
        if error is None or isinstance(error, KeyboardInterrupt):
            error = e

    if engine is not None:
        engine.stop()
        engine.join(10.0, file=False)
    display.close()
    if source is not None:
        source.stop(abandon=isinstance(error, InputLost))
    if midi is not None:
        midi.close()  # all notes off
    worker = getattr(engine, "file_worker", None)
    if worker is not None:  # the files model's last notes, after the port's (they come its look-ahead later)
        wait = engine.settings.record.files_drain_s
        if worker.backlog_s >= 1.0 and not args.quiet:
            _say(f"kkoma {args.command}: the files model is writing the last {worker.backlog_s:.0f} s of the take...",
                 file=sys.stderr)
        engine.join(wait)
        if not worker.join(0):
            keep(KkomaError(f"the files model had not finished the take {wait:g} s after it ended "
                            f"(record.files_drain_s); {args.out} has its notes up to {worker.done_s:.1f} s."))
        elif engine.error is not None:
            keep(engine.error)
    if recorder is not None:
        try:
            recorder.close()
        except BaseException as e:
            keep(e)
    if jsonl is not None:
        try:
            jsonl.close()
        except OSError as e:
            keep(KkomaError(f"cannot write {args.events_jsonl} ({e.strerror or e})."))
    if engine is not None and args.stats_json:
        try:
            with open(args.stats_json, "w", encoding="utf-8") as fh:
                json.dump(engine.report(), fh, indent=2)
                fh.write("\n")
        except OSError as e:
            keep(KkomaError(f"cannot write {args.stats_json} ({e.strerror or e})."))
    if engine is not None and not args.quiet:
        h = engine.stats.summary()
        if h["hops"]:
            _say(f"kkoma {args.command}: {engine.hops} hops, compute per hop p50 {h['p50_ms']:.2f} ms, p99 "
                  f"{h['p99_ms']:.2f} ms, max {h['max_ms']:.2f} ms; overflows {engine.source.ring.overflows} "
                  f"(ring) + {getattr(engine.source, 'overflows', 0)} (driver); {engine.events_sent} MIDI events",
                  file=sys.stderr)
    if isinstance(error, KeyboardInterrupt):
        error = None  # Ctrl-C / SIGTERM / SIGHUP is the normal way to stop
    return error


def run_live(args, settings) -> int:
    return _session(args, settings)


def run_record(args, settings) -> int:
    from pathlib import Path

    out = Path(args.out)
    if out.suffix.lower() not in (".mid", ".midi"):
        raise KkomaError(f"the recording must be a .mid file, not {out.name}.")
    # Checked before anything opens: a take already on disk is never replaced by accident.
    for path in (out, Path(args.audio) if args.audio else None):
        if path is not None and path.exists() and not args.overwrite:
            raise KkomaError(f"{path} already exists; choose another name or add --overwrite to replace it.")
    return _session(args, settings, record_path=out, audio_path=args.audio)


# ---------------------------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------------------------
def run_devices(args, settings) -> int:
    from kkoma.realtime.audio_in import input_devices
    from kkoma.realtime.midi_out import list_outputs

    try:
        inputs = input_devices()
        audio_error = None
    except KkomaError as e:
        inputs, audio_error = [], str(e)
    midi = list_outputs()
    if getattr(args, "json", False):
        print(json.dumps({"audio_inputs": inputs, "audio_error": audio_error, "midi_outputs": midi}, indent=2))
        return 0
    print("Audio inputs:")
    if audio_error:
        print(f"  ({audio_error})")
    elif not inputs:
        print("  none (connect a device or start JACK; `kkoma live --input FILE` works without one)")
    for d in inputs:
        star = " [default]" if d["default"] else ""
        print(f"  {d['index']:>3}: {d['name']} ({d['hostapi']}), {d['channels']} ch, "
              f"{d['default_rate']:.0f} Hz{star}")
    print("MIDI outputs:")
    if not midi:
        print("  no MIDI API compiled into python-rtmidi")
    for api, ports in midi.items():
        if isinstance(ports, str):
            print(f"  {api}: {ports}")
        elif not ports:
            print(f"  {api}: no ports (kkoma opens a virtual port named {settings.midi.port_name!r})")
        else:
            print(f"  {api}:")
            for i, p in enumerate(ports):
                print(f"    {i}: {p}")
    return 0
