"""Settings: ``config.toml`` loaded once into frozen, typed dataclasses.

Every constant of kkoma is defined in ``config.toml`` at the repository root. This module gives each key a type,
a unit and its allowed values, and derives what follows from them (frame rate, fmin in Hz, latency figures), so
nothing is ever copied. Use::

    from kkoma.models.settings import load_settings
    s = load_settings()                                  # config.toml
    s = load_settings("my.toml", ["cqt.lookahead_ms=10"])  # your file (only the keys it changes) + overrides

A wrong key, type or value raises :class:`ConfigError` with one sentence naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from kkoma.models.errors import KkomaError

#: The folder holding ``models/`` and ``config.toml``: the repository root in a checkout, ``site-packages/kkoma`` in
#: an installed wheel (which ships ``config.toml`` there). config.toml's relative paths (the weights) point into it.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PACKAGE_ROOT / "config.toml"


class ConfigError(KkomaError, ValueError):
    """A settings problem a user can fix; its message is one sentence naming the key."""


def _f(*, lo: float | None = None, hi: float | None = None, choices: tuple | None = None,
       lo_open: bool = False, unit: str = "", doc: str = "", item: str | None = None):
    """A dataclass field carrying its validation rule (checked by :func:`_check`). ``item``: the type every entry of
    a list must have (``"str"`` or ``"float"``, a number); None reads each entry as a string or a number."""
    return field(metadata={"lo": lo, "hi": hi, "choices": choices, "lo_open": lo_open, "unit": unit, "doc": doc,
                           "item": item})


@dataclass(frozen=True)
class AudioSettings:
    sample_rate: int = _f(lo=8000, hi=96000, unit="Hz")
    hop_length: int = _f(lo=16, hi=4096, unit="samples")
    resample_cutoff: float = _f(lo=0.1, hi=1.0)
    resample_zero_crossings: int = _f(lo=2, hi=256)
    resample_kaiser_beta: float = _f(lo=0.0, hi=30.0)

    @property
    def frame_rate(self) -> float:
        """Feature frames per second [Hz]."""
        return self.sample_rate / self.hop_length

    @property
    def hop_seconds(self) -> float:
        """Duration of one hop [s]."""
        return self.hop_length / self.sample_rate


@dataclass(frozen=True)
class CQTSettings:
    fmin_midi: int = _f(lo=0, hi=127)
    n_bins: int = _f(lo=1, hi=1024)
    bins_per_octave: int = _f(lo=1, hi=120)
    filter_scale: float = _f(lo=0.0, hi=4.0, lo_open=True)
    max_window_ms: float = _f(lo=0.0, lo_open=True, unit="ms")
    lookahead_ms: float = _f(lo=0.0, unit="ms")
    decimation_taps: int = _f(lo=7, hi=255)
    log_offset: float = _f(lo=0.0, lo_open=True)

    @property
    def fmin(self) -> float:
        """Centre frequency of the lowest bin [Hz]."""
        return 440.0 * 2.0 ** ((self.fmin_midi - 69) / 12.0)

    @property
    def bins_per_semitone(self) -> float:
        return self.bins_per_octave / 12.0

    @property
    def fmax(self) -> float:
        """Centre frequency of the highest bin [Hz]."""
        return self.fmin * 2.0 ** ((self.n_bins - 1) / self.bins_per_octave)

    @property
    def frequencies(self) -> np.ndarray:
        """``(n_bins,)`` bin centre frequencies [Hz]."""
        return self.fmin * 2.0 ** (np.arange(self.n_bins) / self.bins_per_octave)

    @property
    def centered(self) -> bool:
        """True when every window is centred on its frame (``lookahead_ms = inf``)."""
        return math.isinf(self.lookahead_ms)


#: Keys added after weights files and datasets were first written: a record without one was made with this value.
ADDED_KEYS: dict[str, dict[str, Any]] = {"cqt": {"max_window_ms": math.inf},
                                         "model": {"harmonic_units": 0, "backward_units": 0}}

#: Keys of options since removed that records written before may still hold, with the one value this kkoma runs
#: (the option off): a record holding another value was made for a part this kkoma no longer has.
RETIRED_KEYS: dict[str, dict[str, Any]] = {"model": {"offset_head": False}}


def retired_setting(record: Mapping[str, Any]) -> tuple[str, str, Any] | None:
    """The first ``(section, key, stored)`` of :data:`RETIRED_KEYS` that a stored settings record holds with a value
    other than the one this kkoma runs, or None."""
    for section, keys in RETIRED_KEYS.items():
        for key, value in keys.items():
            sec = record.get(section, {})
            if isinstance(sec, Mapping) and key in sec and sec[key] != value:
                return section, key, sec[key]
    return None


def recorded(record: Mapping[str, Any], section: str, key: str, missing: Any = "<missing>") -> Any:
    """``record[section][key]`` of a stored settings record (a weights file's or a dataset manifest's), reading a
    key the record predates as its :data:`ADDED_KEYS` value and any other absent key as ``missing``."""
    sec = record.get(section, {})
    return sec[key] if key in sec else ADDED_KEYS.get(section, {}).get(key, missing)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)  # inf == inf; 1 == 1.0 (JSON does not keep the type)
    return a == b


def first_mismatch(record: Mapping[str, Any], want: Mapping[str, Mapping[str, Any]],
                   missing_ok: bool = False) -> tuple[str, str, Any, Any] | None:
    """The first ``(section, key, stored, wanted)`` where a stored settings record differs from ``want``
    (section -> key -> value), or None. Keys the record predates read as :data:`ADDED_KEYS`; any other key absent
    from the record is a mismatch unless ``missing_ok``."""
    for section, keys in want.items():
        for key, value in keys.items():
            have = recorded(record, section, key, value if missing_ok else "<missing>")
            if not _same_value(have, value):
                return section, key, have, value
    return None


@dataclass(frozen=True)
class ModelSettings:
    weights: str = _f()
    window_frames: int = _f(lo=1, hi=10000, unit="frames")
    units: int = _f(lo=1, hi=2048)
    lookahead_frames: int = _f(lo=0, hi=1000, unit="frames")
    context_frames: int = _f(lo=1, hi=100, unit="frames")
    input_units: int = _f(lo=1, hi=4096)
    harmonic_units: int = _f(lo=0, hi=1024)
    harmonic_features: int = _f(lo=1, hi=64)
    harmonics: tuple = _f(lo=0.0, lo_open=True, item="float")
    backward_units: int = _f(lo=0, hi=2048)
    backward_block_frames: int = _f(lo=1, hi=100000, unit="frames")
    backward_context_frames: int = _f(lo=0, hi=100000, unit="frames")
    ensemble: tuple = _f(item="str", doc="weights files run beside model.weights, outputs averaged")
    ensemble_weights: tuple = _f(lo=0.0, lo_open=True, item="float",
                                 doc="each network's share of the average, weights first")

    @property
    def weights_path(self) -> Path:
        """Weights file. A relative path is looked up in the current folder, then in the package root (where
        config.toml's own paths point)."""
        return _weights_file(self.weights)

    @property
    def ensemble_paths(self) -> list[Path]:
        """``ensemble``'s weights files, found as :attr:`weights_path` is."""
        return [_weights_file(str(p)) for p in self.ensemble]

    @property
    def name(self) -> str:
        """The model's files as a person reads them: ``kkoma_offline.npz``, ``kkoma_offline.npz + kkoma_pitch.npz``,
        ``kkoma.npz + kkoma_pitch_live.npz at 0.85 / 0.15`` (the shares, where given: none = equal)."""
        files = " + ".join(p.name for p in [self.weights_path, *self.ensemble_paths])
        return files + (" at " + " / ".join(f"{w:g}" for w in self.ensemble_weights) if self.ensemble_weights else "")


def _weights_file(name: str) -> Path:
    p = Path(name).expanduser()
    if p.is_absolute():
        return p
    here = Path.cwd() / p
    return here if here.is_file() else PACKAGE_ROOT / p


@dataclass(frozen=True)
class TrackerSettings:
    onset_threshold: float = _f(lo=0.0, hi=1.0)
    restrike_margin: float = _f(lo=0.0, hi=1.0)
    frame_threshold: float = _f(lo=0.0, hi=1.0)
    min_ioi_ms: float = _f(lo=0.0, unit="ms")
    min_duration_ms: float = _f(lo=0.0, unit="ms")
    max_duration_s: float = _f(lo=0.0, lo_open=True, unit="s")
    offset_hold_ms: float = _f(lo=0.0, unit="ms")


@dataclass(frozen=True)
class LiveSettings:
    block_size: int = _f(lo=16, hi=16384, unit="samples")
    device: str = _f()
    channels: int = _f(lo=0, hi=256)
    ring_seconds: float = _f(lo=0.1, hi=600.0, unit="s")
    display: bool = _f()
    device_rate: int = _f(lo=0, hi=768000, unit="Hz")
    stall_s: float = _f(lo=0.1, hi=3600.0, unit="s")
    display_hz: float = _f(lo=0.1, hi=100.0, unit="Hz")
    poll_ms: float = _f(lo=0.1, hi=100.0, unit="ms")


@dataclass(frozen=True)
class MidiSettings:
    port_name: str = _f()
    api: str = _f(choices=("auto", "alsa", "jack", "coremidi", "winmm"))
    channel: int = _f(lo=1, hi=16)
    velocity_min: int = _f(lo=1, hi=127)
    velocity_max: int = _f(lo=1, hi=127)
    velocity_gamma: float = _f(lo=0.0, hi=10.0, lo_open=True)


@dataclass(frozen=True)
class SynthSettings:
    soundfonts: tuple = _f(item="str")
    program: int = _f(lo=0, hi=127)
    driver: str = _f()
    device: str = _f()
    sample_rate: int = _f(lo=8000, hi=192000, unit="Hz")
    period_size: int = _f(lo=16, hi=8192, unit="frames")
    periods: int = _f(lo=2, hi=64)
    gain: float = _f(lo=0.0, hi=10.0)
    reverb: bool = _f()


@dataclass(frozen=True)
class RecordSettings:
    autosave_s: float = _f(lo=0.05, hi=3600.0, unit="s")
    ticks_per_beat: int = _f(lo=24, hi=32767)
    tempo_bpm: float = _f(lo=1.0, hi=1000.0)
    files_queue_s: float = _f(lo=0.1, hi=3600.0, unit="s")
    files_drain_s: float = _f(lo=0.0, hi=86400.0, unit="s")


@dataclass(frozen=True)
class TranscribeSettings:
    chunk_frames: int = _f(lo=1, hi=10_000_000, unit="frames")
    jobs: int = _f(lo=0, hi=1024)
    device: str = _f(choices=("auto", "cpu", "gpu"))
    overrides: tuple = _f(item="str",
                          doc="section.key=value settings for offline work (load_settings(offline=True))")


@dataclass(frozen=True)
class ServeSettings:
    host: str = _f(doc="address `kkoma serve` listens on")
    port: int = _f(lo=0, hi=65535)
    max_clients: int = _f(lo=1, hi=256)
    max_upload_mb: float = _f(lo=0.0, lo_open=True, unit="MB")
    keep_takes: int = _f(lo=1, hi=10000)


@dataclass(frozen=True)
class DataSettings:
    soundfonts: tuple = _f(item="str")
    programs: tuple = _f(lo=0, hi=127)
    holdout_soundfont: str = _f()
    sample_sets: tuple = _f(item="str")
    sample_set_fraction: float = _f(lo=0.0, hi=1.0)
    holdout_piece_fraction: float = _f(lo=0.0, hi=0.9)
    maps_holdout_pianos: tuple = _f(item="str")
    maps_holdout_piece_fraction: float = _f(lo=0.0, hi=0.9)
    maps_ambient_pianos: tuple = _f(item="str")
    max_piece_seconds: float = _f(lo=0.0, lo_open=True, unit="s")
    seed: int = _f()
    render_gain: float = _f(lo=0.0, hi=10.0, lo_open=True)
    tail_seconds: float = _f(lo=0.0, hi=60.0, unit="s")
    jobs: int = _f(lo=0, hi=1024)
    export_audio: bool = _f()


@dataclass(frozen=True)
class AugmentSettings:
    probability: float = _f(lo=0.0, hi=1.0)
    reverb_rt60_s: tuple = _f(lo=0.0, unit="s", item="float")
    reverb_wet: tuple = _f(lo=0.0, hi=1.0, item="float")
    snr_db: tuple = _f(unit="dB", item="float")
    eq_gain_db: float = _f(lo=0.0, hi=40.0, unit="dB")
    gain_db: tuple = _f(hi=40.0, unit="dB", item="float")
    detune_cents: float = _f(lo=0.0, hi=100.0, unit="cents")


@dataclass(frozen=True)
class TrainSettings:
    batch_size: int = _f(lo=1, hi=4096)
    learning_rate: float = _f(lo=0.0, lo_open=True)
    epochs: int = _f(lo=1)
    patience: int = _f(lo=0)
    steps_per_epoch: int = _f(lo=0)
    seed: int = _f()
    mixed_precision: str = _f(choices=("auto", "on", "off"))
    norm_pieces: int = _f(lo=1)
    clip_norm: float = _f(lo=0.0)
    velocity_weight: float = _f(lo=0.0)
    valid_max_pieces: int = _f(lo=0)
    onset_pos_weight: float = _f(lo=1.0, hi=1000.0)
    onset_target_frames: int = _f(lo=1, hi=10, unit="frames")
    spectral_eq_db: float = _f(lo=0.0, hi=40.0, unit="dB")
    spectral_eq_probability: float = _f(lo=0.0, hi=1.0)
    average_decay: float = _f(lo=0.0, hi=0.99999)
    room_probability: float = _f(lo=0.0, hi=1.0)
    selection: str = _f(choices=("notes", "frames"))


@dataclass(frozen=True)
class Settings:
    """All of kkoma's settings. Sections mirror the ``[tables]`` of ``config.toml``."""
    audio: AudioSettings
    cqt: CQTSettings
    model: ModelSettings
    tracker: TrackerSettings
    live: LiveSettings
    midi: MidiSettings
    synth: SynthSettings
    record: RecordSettings
    transcribe: TranscribeSettings
    serve: ServeSettings
    data: DataSettings
    augment: AugmentSettings
    train: TrainSettings
    source: str = "config.toml"

    # ---- derived figures -------------------------------------------------------------------------------------
    @property
    def model_lookahead_ms(self) -> float:
        """Look-ahead of the streaming model [ms]: it emits frame t after seeing frame t + lookahead_frames."""
        return 1000.0 * self.model.lookahead_frames * self.audio.hop_seconds

    def replace(self, **overrides: str) -> "Settings":
        """A copy with ``section.key=value``-style overrides applied and validated (keys use ``__`` for the dot)."""
        return _apply(self, [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])


_SECTION_TYPES = {
    "audio": AudioSettings, "cqt": CQTSettings, "model": ModelSettings, "tracker": TrackerSettings,
    "live": LiveSettings, "midi": MidiSettings, "synth": SynthSettings, "record": RecordSettings,
    "transcribe": TranscribeSettings, "serve": ServeSettings, "data": DataSettings, "augment": AugmentSettings,
    "train": TrainSettings,
}
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "tuple": tuple}


def _describe(meta: Mapping[str, Any], typ: str) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo, hi = meta.get("lo"), meta.get("hi")
    unit = f" {meta['unit']}" if meta.get("unit") else ""
    kind = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
            "tuple": "a list"}[typ]
    if lo is not None and hi is not None:
        return f"{kind} from {lo} to {hi}{unit}"
    if lo is not None:
        return f"{kind} {'>' if meta.get('lo_open') else '>='} {lo}{unit}"
    if hi is not None:
        return f"{kind} <= {hi}{unit}"
    return kind


def _check_scalar(key: str, value: Any, meta: Mapping[str, Any], typ: str) -> Any:
    want = _describe(meta, typ)
    if typ == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be {want}, not {value!r}.")
        return value
    if typ == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be {want}, not {value!r}.")
    elif typ == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be {want}, not {value!r}.")
    elif typ == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ConfigError(f"{key} must be {want}, not {value!r}.")
        value = float(value)
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key} must be {want}, not {value!r}.")
    lo, hi = meta.get("lo"), meta.get("hi")
    if typ in ("int", "float"):
        if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
            raise ConfigError(f"{key} must be {want}, not {value!r}.")
        if hi is not None and value > hi:
            raise ConfigError(f"{key} must be {want}, not {value!r}.")
    return value


def _check(section: str, name: str, value: Any, f: dataclasses.Field) -> Any:
    key = f"{section}.{name}"
    typ = f.type if isinstance(f.type, str) else f.type.__name__
    meta = f.metadata
    if typ == "tuple":
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, not {value!r}.")
        # A number in a list of names would pass as "1.0" and fail far from here (a missing weights file); a name in a
        # list of numbers would fail in arithmetic.
        item = meta.get("item")
        if item == "str" and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, not {value!r}.")
        if item == "float" and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be a list of numbers, not {value!r}.")
        return tuple(_check_scalar(key, v, meta, item or ("str" if isinstance(v, str) else "float")) for v in value)
    return _check_scalar(key, value, meta, typ)


def _build(raw: Mapping[str, Any], source: str, cross_check: bool = True) -> Settings:
    unknown = sorted(set(raw) - set(_SECTION_TYPES))
    if unknown:
        raise ConfigError(f"{source}: unknown section [{unknown[0]}]; the sections are "
                          + ", ".join(_SECTION_TYPES) + ".")
    sections = {}
    for sname, cls in _SECTION_TYPES.items():
        table = raw.get(sname, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{sname}] must be a table of keys.")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for k in table:
            if k not in fields:
                raise ConfigError(f"{source}: unknown key {sname}.{k}; the keys of [{sname}] are "
                                  + ", ".join(fields) + ".")
        missing = [k for k in fields if k not in table]
        if missing:
            raise ConfigError(f"{source}: key {sname}.{missing[0]} is missing.")
        sections[sname] = cls(**{k: _check(sname, k, table[k], fields[k]) for k in fields})
    s = Settings(**sections, source=source)
    _check_profile(s)
    if cross_check:
        _cross_check(s)
    return s


def _check_profile(s: Settings) -> None:
    """``transcribe.overrides`` name settings outside [transcribe] (checked on every build: files are made from it)."""
    for text in s.transcribe.overrides:
        try:
            section, key, _ = parse_override(str(text))
        except ConfigError as e:
            raise ConfigError(f"transcribe.overrides: {e}") from None
        cls = _SECTION_TYPES.get(section)
        if cls is None or key not in {f.name for f in dataclasses.fields(cls)} or section == "transcribe":
            raise ConfigError(f"transcribe.overrides: {text!r} does not name a setting outside [transcribe].")


def _cross_check(s: Settings) -> None:
    """Constraints that tie several keys together."""
    if s.tracker.onset_threshold + s.tracker.restrike_margin > 1.0:
        raise ConfigError("tracker.onset_threshold + tracker.restrike_margin must not exceed 1 "
                          f"({s.tracker.onset_threshold} + {s.tracker.restrike_margin}): no key could be re-struck.")
    if s.tracker.frame_threshold > s.tracker.onset_threshold:
        raise ConfigError("tracker.frame_threshold must not exceed tracker.onset_threshold "
                          f"({s.tracker.frame_threshold} > {s.tracker.onset_threshold}).")
    if s.midi.velocity_min > s.midi.velocity_max:
        raise ConfigError("midi.velocity_min must not exceed midi.velocity_max.")
    if s.cqt.decimation_taps % 2 == 0:
        raise ConfigError(f"cqt.decimation_taps must be odd, not {s.cqt.decimation_taps}.")
    if s.cqt.fmax >= s.audio.sample_rate / 2:
        raise ConfigError(f"cqt: the top bin ({s.cqt.fmax:.0f} Hz) must lie below the Nyquist frequency "
                          f"({s.audio.sample_rate / 2:.0f} Hz of audio.sample_rate); lower cqt.n_bins or raise "
                          "audio.sample_rate.")
    shares, nets = len(s.model.ensemble_weights), 1 + len(s.model.ensemble)
    if shares and shares != nets:
        files = " + ".join(Path(str(p)).name for p in [s.model.weights, *s.model.ensemble])
        raise ConfigError(f"model.ensemble_weights gives {shares} share{'s' * (shares != 1)} but the model has {nets} "
                          f"network{'s' * (nets != 1)} ({files}): one share for model.weights and one per "
                          "model.ensemble file, or [] for equal shares.")
    for name in ("reverb_rt60_s", "reverb_wet", "snr_db", "gain_db"):
        v = getattr(s.augment, name)
        if len(v) != 2 or v[0] > v[1]:
            raise ConfigError(f"augment.{name} must be a [low, high] pair, not {list(v)!r}.")


def _merge(base: dict, update: Mapping[str, Any]) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = v
    return out


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist.") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML ({e}).") from None
    except UnicodeDecodeError:  # TOML is UTF-8; editors on Windows may save UTF-16
        raise ConfigError(f"config file {path} is not UTF-8 text (TOML files must be UTF-8: save it as UTF-8)."
                          ) from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror}).") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"section.key=value"`` -> (section, key, value); the value is read as TOML, else as a bare string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. cqt.lookahead_ms=10).")
    lhs, rhs = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    rhs = rhs.strip()
    try:
        value = tomllib.loads(f"v = {rhs}")["v"]
    except tomllib.TOMLDecodeError:
        value = rhs
    return section, key, value


def _overrides_to_table(overrides: Iterable[str]) -> dict:
    table: dict[str, dict] = {}
    for o in overrides:
        section, key, value = parse_override(o)
        if section not in _SECTION_TYPES:
            raise ConfigError(f"override {o!r}: unknown section [{section}]; the sections are "
                              + ", ".join(_SECTION_TYPES) + ".")
        table.setdefault(section, {})[key] = value
    return table


def _as_raw(s: Settings) -> dict:
    return {name: {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in dataclasses.asdict(getattr(s, name)).items()} for name in _SECTION_TYPES}


def _apply(s: Settings, overrides: Iterable[str]) -> Settings:
    return _build(_merge(_as_raw(s), _overrides_to_table(overrides)), s.source)


_DEFAULTS: Settings | None = None


def _explicit_keys(user: Mapping[str, Any] | None, overrides: Iterable[str]) -> set[tuple[str, str]]:
    """(section, key) of every setting the user gave (their file and --set): a weights file's record never
    overrides those."""
    keys = {(sec, k) for sec, table in (user or {}).items() if isinstance(table, dict) for k in table}
    return keys | {parse_override(o)[:2] for o in overrides}


#: The keys that say which networks a model is.
NETWORK_KEYS = frozenset({("model", "weights"), ("model", "ensemble"), ("model", "ensemble_weights")})


def load_settings(path: str | Path | None = None, overrides: Iterable[str] = (), offline: bool = False,
                  model: str | None = None, weights_settings: bool = True, network_keys: bool = True) -> Settings:
    """Load settings: the repository's ``config.toml``, then the user's file on top, then ``overrides``.

    Parameters
    ----------
    path : a TOML file holding only the keys it changes (sections as in ``config.toml``), or None.
    overrides : ``"section.key=value"`` strings (value in TOML syntax; a bare word is a string).
    offline : settings for work on files (``kkoma transcribe``, ``kkoma evaluate``): ``transcribe.overrides``
        (as they stand after ``path`` and ``overrides``) replace ``config.toml``'s values first, and the user's file
        and ``overrides`` still win over them. This is how files get the offline model and its features while
        ``kkoma live`` keeps the live ones.
    model : ``--model``: a shipped model's name (``models/weights/models.toml``) or a weights file, put in
        ``model.weights`` (and its entry's files in ``model.ensemble``) over the user's file and under
        ``overrides``: a ``--config`` file holds settings, ``--model`` names the model. A shipped model also
        decides ``offline``: the one ``transcribe.overrides`` names brings them (its transform and tracker), any
        other comes without them and brings its models.toml entry's ``tracker`` table instead (under the user's file
        and overrides); an entry
        with ``ensemble`` files (put in ``model.ensemble``) is built on the model the overrides name, takes them, and
        brings its tracker over config.toml's overrides (not over a ``transcribe.overrides`` list the user's file or
        ``overrides`` wrote: its keys are the user's, as a ``[tracker]`` table's are). An entry's tracker was tuned
        for its files and applies only while ``model.weights`` and ``model.ensemble`` are still those files:
        ``--model ensemble --set 'model.ensemble=[]'`` is the offline model, with the tracker ``--model offline``
        gets. Its ``ensemble_weights`` go with its files too, on the same test: other files get equal shares unless
        the user sets ``model.ensemble_weights``. Keys checked together (the shares and the files) are checked on the
        settings as they end up, so a user's file may give the shares for the files ``--model`` names.
    network_keys : False leaves out the user's file's and ``overrides``' :data:`NETWORK_KEYS` (which networks the
        model is): the files model of a live session (``kkoma record --notes files``, ``kkoma serve``), whose
        ``--config`` and ``--set`` of those keys tune the live model; the files model is ``model``'s (--files-model)
        or config.toml's.

    The weights file that ends up in ``model.weights`` carries the audio, transform and network settings it was
    trained with; they replace ``config.toml``'s (and ``transcribe.overrides``') values for every key the user's
    file and ``overrides`` do not set, so a model needs no ``--set`` of its own. This is the one place a file's
    record is applied: loading the weights (:func:`models.inference.load_weights`) adopts nothing, it checks. A
    user's value that differs from the record is kept, and loading the weights then says which key does not match
    (as it does for settings made for another file). ``weights_settings=False`` leaves
    the record out (``kkoma prepare`` and ``kkoma train`` make data and models for the settings as written, whatever
    file ``model.weights`` names, unless ``--model`` asks for one's settings).

    Raises
    ------
    ConfigError : one sentence naming the offending key and the allowed values.
    """
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = _build(_read_toml(DEFAULT_CONFIG), DEFAULT_CONFIG.name)
    overrides = list(overrides)
    user = _read_toml(Path(path)) if path is not None else None
    for section, table in (user or {}).items():
        if not isinstance(table, dict):  # said here: merged with --set's tables it would read as missing keys
            raise ConfigError(f"{path}: [{section}] must be a table of keys.")
    if not network_keys:
        overrides = [o for o in overrides if parse_override(str(o))[:2] not in NETWORK_KEYS]
        user = None if user is None else \
            {sec: {k: v for k, v in table.items() if (sec, k) not in NETWORK_KEYS} for sec, table in user.items()}
    user_keys = _explicit_keys(user, overrides)
    shipped, chosen = None, []  # chosen: --model's keys, over the user's file, under the overrides
    if model is not None:
        from kkoma.models.catalog import resolve_model

        model_path, shipped = resolve_model(model)
        members = [] if shipped is None else [str(p) for p in shipped.ensemble_paths]
        # Equal shares unless the user gives some; the entry's own go on at the end, with its tracker, while its
        # files are in force.
        chosen = [f"model.weights={_toml_string(str(model_path))}",
                  f"model.ensemble=[{', '.join(_toml_string(p) for p in members)}]"] + \
            ([] if ("model", "ensemble_weights") in user_keys else ["model.ensemble_weights=[]"])
    layers = [t for t in (user, _overrides_to_table(chosen), _overrides_to_table(overrides)) if t]

    def layered(base: Settings) -> Settings:
        # One build of every layer, its keys checked one by one; the keys checked together (model.ensemble and its
        # shares, the tracker's thresholds) are checked once, on the settings as they end up (below): a user's file
        # may give the shares for the files --model names, a --set may be valid for the files model's tracker only.
        raw = _as_raw(base)
        for table in layers:
            raw = _merge(raw, table)
        return _build(raw, base.source if user is None else str(path), cross_check=False) if layers else base

    def offline_base(s: Settings) -> Settings:
        try:
            return _apply(_DEFAULTS, s.transcribe.overrides)
        except ConfigError as e:
            raise ConfigError(f"transcribe.overrides: {e}") from None

    s = layered(_DEFAULTS)
    if model is not None and shipped is not None:
        offline = s.transcribe.overrides != () and \
            offline_base(s).model.weights_path.resolve() == model_path.resolve()
    base = _DEFAULTS
    if offline and s.transcribe.overrides:
        base = offline_base(s)
        s = layered(base)
    from kkoma.models.catalog import record_table, weights_record

    record = weights_record(s.model.weights_path) if weights_settings or model is not None else None
    # A shipped model chosen by --model brings its entry's tracker settings too (models.toml: tuned after training,
    # so not in the file), under the user's file and --set, like the record. The model transcribe.overrides names
    # has its tracker there; an ensemble built on it is another model, and its entry's tracker wins over config.toml's.
    # The thresholds were tuned for the entry's files: a --set model.ensemble (or model.weights) that makes another
    # model leaves them out, so `--model ensemble --set 'model.ensemble=[]'` is the offline model as files get it.
    def entry_in_force(s: Settings) -> bool:  # model.weights and model.ensemble are still the entry's files
        return model is not None and shipped is not None and \
            [p.resolve() for p in [s.model.weights_path, *s.model.ensemble_paths]] == \
            [p.resolve() for p in [shipped.path, *shipped.ensemble_paths]]
    brought = {"tracker": dict(shipped.tracker)} \
        if entry_in_force(s) and shipped.tracker and (not offline or shipped.ensemble) else {}
    fields = {sec: {f.name for f in dataclasses.fields(_SECTION_TYPES[sec])} for sec in _SECTION_TYPES}
    unknown = sorted(set(brought.get("tracker", {})) - fields["tracker"])
    if unknown:
        raise ConfigError(f"model {model}'s entry in models.toml sets tracker.{unknown[0]}, which is not a tracker "
                          f"setting (they are: {', '.join(sorted(fields['tracker']))}).")
    if record or brought:
        explicit = _explicit_keys(user, chosen + overrides)
        # A transcribe.overrides list the user wrote (their file or --set), when in force, is their own setting too:
        # its keys beat an entry's tracker as their [tracker] does (config.toml's list does not). The weights record
        # still beats it, as it beats config.toml's: the file was trained with its transform.
        mine = explicit | ({parse_override(str(o))[:2] for o in s.transcribe.overrides}
                           if offline and ("transcribe", "overrides") in explicit else set())

        def unset(tables: dict, given: set) -> dict:  # the keys the user did not set
            return {sec: {k: (list(v) if isinstance(v, tuple) else v) for k, v in keys.items()
                          if (sec, k) not in given and k in fields[sec]} for sec, keys in tables.items()}

        with_record = base
        for tables, given, what in ((record_table(record) if record else {}, explicit,
                                     f"model weights {s.model.weights_path} carry"),
                                    (brought, mine, f"model {model}'s entry in models.toml holds")):
            try:
                with_record = _build(_merge(_as_raw(with_record), unset(tables, given)), base.source) if tables \
                    else with_record
            except ConfigError as e:
                raise ConfigError(f"{what} settings this kkoma refuses ({e})") from None
        if with_record != base:
            s = layered(with_record)
    # The entry's shares, like its tracker, were chosen for its files: other files get equal shares unless given.
    if entry_in_force(s) and shipped.ensemble_weights and ("model", "ensemble_weights") not in user_keys:
        return _apply(s, [f"model.ensemble_weights={[float(w) for w in shipped.ensemble_weights]!r}"])  # checked
    _cross_check(s)
    return s


def _toml_string(text: str) -> str:
    """A TOML basic string holding ``text`` (for an override built from a path)."""
    import json

    return json.dumps(text)
