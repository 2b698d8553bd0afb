"""The shipped models by name, and the settings a weights file carries.

``models/weights/models.toml`` names the shipped weights files and says what each is for and how accurate it
measured (the model card's figures); everything else about a model is read from its file's ``meta`` record
(:func:`models.network.settings_record`: the audio, transform and network settings it was trained with), which
:func:`models.settings.load_settings` applies, so selecting a model is one ``--model NAME`` (or a path) for any
command.

Only the standard library is imported at module level (``kkoma --help`` imports the ``models`` command's module).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CATALOG = WEIGHTS_DIR / "models.toml"

#: The record sections and keys a weights file's settings fill in (``model.n_bins`` is ``cqt.n_bins``, which the
#: record holds under ``cqt`` too).
_RECORD_SECTIONS = ("audio", "cqt", "model")
_NOT_SETTINGS = {("model", "n_bins")}


@dataclass(frozen=True)
class ShippedModel:
    """One entry of ``models.toml``: ``name`` (what ``--model`` takes), ``file`` (in models/weights), ``run`` (the
    training run, as the model card names it), ``purpose`` (one line), ``onset_f1`` (condition -> note onset F1
    [%], from the model card), ``tracker`` (``[tracker]`` settings chosen for it after training, which
    ``--model NAME`` applies under the user's own; empty for the default models, whose tracker is config.toml's),
    ``ensemble`` (files in models/weights run beside ``file`` and averaged with it: ``model.ensemble``) and
    ``ensemble_weights`` (their shares of the average, ``file``'s first: ``model.ensemble_weights``; () = equal)."""
    name: str
    file: str
    run: str
    purpose: str
    onset_f1: dict
    tracker: dict
    ensemble: tuple = ()
    ensemble_weights: tuple = ()

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file

    @property
    def ensemble_paths(self) -> list[Path]:
        """The files averaged with :attr:`path` (``models.toml``'s ``ensemble``; none for one network)."""
        return [WEIGHTS_DIR / f for f in self.ensemble]


def shipped_models() -> list[ShippedModel]:
    """The shipped models, in ``models.toml``'s order."""
    with open(CATALOG, "rb") as fh:
        table = tomllib.load(fh)
    return [ShippedModel(name=name, file=e["file"], run=e["run"], purpose=e["purpose"],
                         onset_f1=dict(e.get("onset_f1", {})), tracker=dict(e.get("tracker", {})),
                         ensemble=tuple(e.get("ensemble", ())),
                         ensemble_weights=tuple(e.get("ensemble_weights", ())))
            for name, e in table.items()]


def resolve_model(name_or_path: str) -> tuple[Path, ShippedModel | None]:
    """``--model``'s value -> (weights file, the shipped entry or None). A name (or a shipped file's stem, e.g.
    ``kkoma_offline``) selects a shipped model; anything else is a path to a ``.npz``.

    Raises ConfigError (one sentence listing the names) when it is neither."""
    from kkoma.models.settings import ConfigError

    models = shipped_models()
    for m in models:
        if name_or_path in (m.name, Path(m.file).stem, m.file):
            return m.path, m
    p = Path(name_or_path).expanduser()
    if p.is_file():
        for m in models:  # a shipped file given by its path is still that model
            if m.path.exists() and p.resolve() == m.path.resolve():
                return m.path, m
        return p, None
    raise ConfigError(f"--model {name_or_path}: no such model or file; the shipped models are "
                      + ", ".join(m.name for m in models) + " (`kkoma models`), or give a .npz path.")


def weights_record(path: str | Path) -> dict[str, Any] | None:
    """The settings record stored in a weights file (``{"audio": {...}, "cqt": {...}, "model": {...}}``), or None
    when the file is missing or unreadable (loading the weights reports that, with the reason)."""
    import zipfile

    import numpy as np

    try:
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        return None
    rec = meta.get("settings") if isinstance(meta, dict) else None
    return rec if isinstance(rec, dict) else None


def record_table(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A weights record as a settings table (section -> key -> value) of the keys it fixes. Keys it predates
    (:data:`models.settings.ADDED_KEYS`) read as their value from before they existed; keys of removed options
    (:data:`models.settings.RETIRED_KEYS`) are left out (loading the weights refuses a file that has one on)."""
    from kkoma.models.settings import ADDED_KEYS, RETIRED_KEYS

    table: dict[str, dict[str, Any]] = {}
    for section in _RECORD_SECTIONS:
        keys = dict(ADDED_KEYS.get(section, {}))
        keys.update(record.get(section, {}) or {})
        table[section] = {k: v for k, v in keys.items()
                          if (section, k) not in _NOT_SETTINGS and k not in RETIRED_KEYS.get(section, {})}
    return table


# ---------------------------------------------------------------------------------------------------------------
# `kkoma models`
# ---------------------------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def describe(settings, model: ShippedModel) -> dict[str, Any]:
    """What ``kkoma models`` prints for one model: the entry, plus look-ahead [ms] and parameters read from the
    file (with its own settings, as ``--model NAME`` loads it)."""
    from kkoma.models.cqt import CQT
    from kkoma.models.settings import load_settings

    d: dict[str, Any] = {"name": model.name, "file": str(model.path), "run": model.run, "purpose": model.purpose,
                         "onset_f1": model.onset_f1,
                         "available": all(p.is_file() for p in [model.path, *model.ensemble_paths])}
    if not d["available"]:
        return d
    from kkoma.models.inference import member_settings

    s = load_settings(model=model.name)
    transform = CQT(s).lookahead_ms
    # An ensemble answers when its slowest network does: that one's look-ahead and shape are shown.
    nets = [s] + [member_settings(s, p) for p in s.model.ensemble_paths]
    slowest = max(nets, key=lambda n: (n.model_lookahead_ms, n.model.backward_units))
    d["ensemble"] = [p.name for p in s.model.ensemble_paths]
    d["ensemble_weights"] = list(s.model.ensemble_weights)
    d["lookahead_ms"] = {"transform": round(transform, 1), "model": slowest.model_lookahead_ms,
                         "total": round(transform + slowest.model_lookahead_ms, 1)}
    d["settings"] = {f"{sec}.{k}": v for sec, keys in record_table(weights_record(slowest.model.weights_path) or
                                                                   {}).items()
                     for k, v in keys.items() if sec != "audio"}
    d["settings"].update({f"tracker.{k}": v for k, v in model.tracker.items()})
    return d


def run(args, settings) -> int:
    rows = [describe(settings, m) for m in shipped_models()]
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
        return 0
    conditions = sorted({c for r in rows for c in r["onset_f1"]},
                        key=lambda c: next(i for r in rows for i, k in enumerate(r["onset_f1"]) if k == c))
    print("Shipped models (--model NAME, any command; default: live for live/record, offline for files;\n"
          "kkoma record's file and kkoma serve's files take --files-model NAME, default offline):")
    w = max(len(r["name"]) for r in rows)
    for r in rows:
        la = r.get("lookahead_ms")
        ahead = (f"look-ahead {la['total']:g} ms (transform {la['transform']:g} + network {la['model']:g})"
                 if la else "weights file missing")
        st = r.get("settings", {})
        if st.get("model.backward_units"):  # a backward LSTM reads whole blocks: a model for files, not for live
            ahead += (f"; its backward LSTM reads blocks of {st['model.backward_block_frames']} frames plus "
                      f"{st['model.backward_context_frames']} after them (files only)")
        files = " + ".join([Path(r["file"]).name] + r.get("ensemble", []))
        if r.get("ensemble_weights"):
            files += " at " + " / ".join(f"{x:g}" for x in r["ensemble_weights"])
        print(f"\n  {r['name']:<{w}} {files} ({r['run']}): {r['purpose']}")
        print(f"  {'':<{w}} {ahead}")
        f1 = ", ".join(f"{c} {r['onset_f1'][c]:.1f}" for c in conditions if c in r["onset_f1"])
        print(f"  {'':<{w}} onset F1 [%] {f1}")
    print("\nAccuracy: mir_eval note onset F1 on 114 held-out files per condition (models/weights/MODEL_CARD.md: "
          "valid_pieces = held-out pieces, training soundfonts; valid_soundfont = an unseen soundfont; valid_room = "
          "it in a room with noise; valid_samples = a recorded grand; valid_maps_piano = the MAPS Bösendorfer, a "
          "piano never trained on, 18 recordings).")
    return 0
