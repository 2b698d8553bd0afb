"""Models by name: ``kkoma models``, ``--model NAME|FILE`` on any command, and weights files that bring the settings
they were trained with (models/catalog.py, models.settings.load_settings)."""
import dataclasses
import importlib
import json

import numpy as np
import pytest

from kkoma import cli
from kkoma.models.catalog import record_table, resolve_model, shipped_models, weights_record
from kkoma.models.errors import KkomaError
from kkoma.models.inference import StreamingModel, export_random_weights
from kkoma.models.settings import ConfigError, load_settings

MODELS = shipped_models()


def norm(s):
    """Settings with model.weights as the file it names (a name gives an absolute path, config.toml a relative one)."""
    return dataclasses.replace(s, model=dataclasses.replace(s.model, weights=str(s.model.weights_path.resolve())))


def test_every_shipped_model_is_listed_and_loads_by_name_alone():
    assert {m.name for m in MODELS} >= {"live", "offline", "harmonic"}
    for m in MODELS:
        assert m.path.is_file() and m.onset_f1 and m.purpose
        s = load_settings(model=m.name)
        assert s.model.weights_path == m.path
        StreamingModel(s)  # the file's own settings match: loading checks every recorded key
        # its record is applied, so nothing in it differs from the settings
        for sec, keys in record_table(weights_record(m.path)).items():
            for k, v in keys.items():
                have = getattr(getattr(s, sec), k)
                assert (list(have) if isinstance(have, tuple) else have) == v, (m.name, sec, k)


def test_the_models_own_settings_replace_a_second_set():
    h = load_settings(overrides=["model.weights=models/weights/kkoma_harmonic.npz"])
    assert h.model.harmonic_units == 16 and norm(h) == norm(load_settings(model="harmonic"))
    assert norm(load_settings(model="kkoma_harmonic")) == norm(h)  # the file's stem works as a name
    # what the user sets explicitly is kept (and the weights then refuse to load, naming the key)
    mine = load_settings(model="harmonic", overrides=["model.harmonic_units=8"])
    assert mine.model.harmonic_units == 8
    with pytest.raises(KkomaError, match=r"model\.harmonic_units = 16 but the settings say 8"):
        StreamingModel(mine)


def test_files_model_brings_its_transform_and_tracker_everywhere():
    files = load_settings(offline=True)
    assert norm(load_settings(model="offline")) == norm(files)  # `kkoma live --model offline`: the files model as files get it
    live = load_settings()
    t = load_settings(model="live", offline=True)  # `kkoma transcribe --model live`: exactly what live plays
    assert norm(t) == norm(live)


def test_a_shipped_entry_brings_its_tracker_under_the_users_settings(tmp_path, monkeypatch):
    """A models.toml entry's ``tracker`` table (thresholds chosen for that model after training) applies when the
    model is chosen by --model; the user's --set wins; a bad value is one sentence naming the model."""
    from kkoma.models import catalog

    harmonic = next(m for m in MODELS if m.name == "harmonic")
    entry = f'[tuned]\nfile = "{harmonic.file}"\nrun = "r0"\npurpose = "test"\n'
    (tmp_path / "models.toml").write_text(entry + "tracker = { onset_threshold = 0.77, offset_hold_ms = 70.0 }\n")
    monkeypatch.setattr(catalog, "CATALOG", tmp_path / "models.toml")
    base = load_settings()
    s = load_settings(model="tuned")
    assert (s.tracker.onset_threshold, s.tracker.offset_hold_ms) == (0.77, 70.0)
    assert s.tracker.frame_threshold == base.tracker.frame_threshold  # what the entry does not name stays
    assert s.model.harmonic_units == 16  # and the file's record still applies
    assert load_settings(model="tuned", overrides=["tracker.onset_threshold=0.6"]).tracker.onset_threshold == 0.6
    # the same file by --set model.weights is not the shipped entry's choice: config.toml's tracker
    by_set = load_settings(overrides=[f"model.weights={harmonic.path}"])
    assert by_set.tracker.onset_threshold == base.tracker.onset_threshold
    (tmp_path / "models.toml").write_text(entry + "tracker = { onset_threshold = 1.5 }\n")
    with pytest.raises(ConfigError, match="model tuned's entry in models.toml holds settings this kkoma refuses.*onset_threshold"):
        load_settings(model="tuned")
    (tmp_path / "models.toml").write_text(entry + "tracker = { onset_treshold = 0.5 }\n")
    with pytest.raises(ConfigError, match="sets tracker.onset_treshold, which is not a tracker setting"):
        load_settings(model="tuned")
    # the model transcribe.overrides names takes its tracker from there, whatever its entry says
    offline = next(m for m in MODELS if m.name == "offline")
    (tmp_path / "models.toml").write_text(f'[offline]\nfile = "{offline.file}"\nrun = "r0"\npurpose = "test"\n'
                                          "tracker = { onset_threshold = 0.55 }\n")
    assert load_settings(model="offline").tracker == load_settings(offline=True).tracker


def _ensemble_entry(tmp_path, monkeypatch):
    """A models.toml holding one entry, ``duo``: the offline model's file with pitch's beside it and a tracker of its
    own (as the shipped ``ensemble``, with thresholds no other setting uses)."""
    from kkoma.models import catalog

    offline, pitch = (next(m for m in MODELS if m.name == n) for n in ("offline", "pitch"))
    (tmp_path / "models.toml").write_text(f'[duo]\nfile = "{offline.file}"\nensemble = ["{pitch.file}"]\n'
                                          'run = "r0"\npurpose = "test"\n'
                                          "tracker = { onset_threshold = 0.7, frame_threshold = 0.3 }\n")
    monkeypatch.setattr(catalog, "CATALOG", tmp_path / "models.toml")


def test_an_ensembles_tracker_yields_to_the_users_own_transcribe_overrides(tmp_path, monkeypatch):
    """An ensemble built on the offline model takes transcribe.overrides, and its entry's tracker beats config.toml's
    list; a list the user wrote (their file or --set) is their own setting: its tracker keys beat the entry's, as
    their [tracker] table and --set tracker.X do."""
    _ensemble_entry(tmp_path, monkeypatch)
    s = load_settings(model="duo")
    assert (s.tracker.onset_threshold, s.tracker.frame_threshold) == (0.7, 0.3)
    assert s.tracker.restrike_margin == load_settings(offline=True).tracker.restrike_margin  # not in the entry
    mine = ["model.weights=models/weights/kkoma_offline.npz", "tracker.onset_threshold=0.65"]
    cfg = tmp_path / "mine.toml"
    cfg.write_text(f"[transcribe]\noverrides = {json.dumps(mine)}\n")
    for s in (load_settings(cfg, model="duo"), load_settings(model="duo", overrides=[
            f"transcribe.overrides={json.dumps(mine)}"])):
        assert (s.tracker.onset_threshold, s.tracker.frame_threshold) == (0.65, 0.3)  # theirs, and the entry's
        assert [p.name for p in s.model.ensemble_paths] == ["kkoma_pitch.npz"]
    cfg.write_text("[tracker]\nonset_threshold = 0.6\n")
    assert load_settings(cfg, model="duo").tracker.onset_threshold == 0.6


def test_an_ensembles_tracker_goes_with_its_files(tmp_path, monkeypatch):
    """The entry's tracker was tuned for its files: with model.ensemble emptied the model is the offline one, with
    the tracker `--model offline` gets; the same files named another way are still the entry's."""
    _ensemble_entry(tmp_path, monkeypatch)
    alone = load_settings(model="duo", overrides=["model.ensemble=[]"])
    assert alone.model.ensemble == () and alone.tracker == load_settings(offline=True).tracker
    assert load_settings(model="duo", overrides=['model.ensemble=["models/weights/kkoma_pitch.npz"]']
                         ).tracker.onset_threshold == 0.7


def test_a_weights_file_by_path_carries_its_shape(tmp_path):
    small = load_settings(overrides=["model.units=8", "model.input_units=16"])
    path = export_random_weights(tmp_path / "small.npz", small)
    s = load_settings(model=str(path))
    assert (s.model.units, s.model.input_units) == (8, 16) and s.model.weights_path == path
    assert s.tracker == load_settings().tracker  # a file of one's own: the command's usual settings otherwise
    assert load_settings(model=str(path), offline=True).cqt.lookahead_ms == 0.0  # its record beats the overrides'
    StreamingModel(s)


def test_one_resolution_of_a_files_settings(tmp_path, capsys):
    """The one mechanism: load_settings takes a weights file's record for every key the user did not set (an unset
    key is the file's, a --set beats it), and loading the weights checks the settings against the file, adopting
    nothing: a --set that contradicts the file's arrays is one sentence (exit 1, no traceback)."""
    small = load_settings(overrides=["model.units=8", "model.input_units=16"])
    path = export_random_weights(tmp_path / "small.npz", small)
    s = load_settings(model=str(path), overrides=["model.units=12", "tracker.onset_threshold=0.6"])
    assert (s.model.units, s.model.input_units, s.tracker.onset_threshold) == (12, 16, 0.6)
    with pytest.raises(KkomaError) as e:
        StreamingModel(s)
    assert "model.units = 8 but the settings say 12" in str(e.value)
    StreamingModel(load_settings(model=str(path), overrides=["model.units=8"]))  # a --set that agrees is fine
    with pytest.raises(KkomaError, match="trained with model.input_units = 16 but the settings say 256"):
        StreamingModel(load_settings(), weights_path=path)  # settings made for another file: not adopted
    assert cli.main(["models", "--model", str(path), "--set", "model.units=12"]) == 0  # listing loads no weights
    wav = tmp_path / "silence.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(16000, np.float32), 16000)
    capsys.readouterr()
    assert cli.main(["transcribe", str(wav), "-o", str(tmp_path / "out"), "-q", "--model", str(path),
                     "--set", "model.units=12"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and "model.units = 8 but the settings say 12" in err


def test_unknown_model_is_one_sentence_exit_2(capsys):
    with pytest.raises(ConfigError):
        resolve_model("no-such-model")
    assert cli.main(["models", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "no such model" in err and "live" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--model", "harmonic", "transcribe", "x.wav"],
                                  ["transcribe", "x.wav", "--model", "harmonic"],
                                  ["live", "--no-midi", "--model", "harmonic"],
                                  ["evaluate", "--pred", "p", "--ref", "r", "--model", "harmonic"]])
def test_model_option_reaches_every_command(monkeypatch, argv):
    seen = []
    name = argv[0] if argv[0] != "--model" else argv[2]
    module = importlib.import_module(cli.COMMANDS[name][0])
    for fn in ("run", f"run_{name}"):
        monkeypatch.setattr(module, fn, lambda args, settings: seen.append(settings) or 0, raising=False)
    assert cli.main(argv) == 0
    assert [norm(s) for s in seen] == [norm(load_settings(model="harmonic"))]


def test_models_command(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for m in MODELS:
        assert m.name in out and m.file in out
    assert "look-ahead 20 ms" in out and "look-ahead 268" in out
    assert cli.main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {r["name"]: r for r in rows}
    assert by["offline"]["lookahead_ms"]["transform"] > 200 and by["live"]["lookahead_ms"]["transform"] == 0
    assert by["harmonic"]["settings"]["model.harmonic_units"] == 16
    assert np.isclose(by["offline"]["onset_f1"]["valid_room"], 78.0)


def test_train_and_prepare_keep_the_settings_as_written(monkeypatch, tmp_path):
    """Making data or a model: config.toml / --set decide the shape, not whatever file model.weights names (a new
    architecture in config.toml must not be replaced by the shipped file's); --model still brings one's settings."""
    small = load_settings(overrides=["model.units=8", "model.input_units=16"])
    path = export_random_weights(tmp_path / "small.npz", small)
    for argv in (["train", "data", "run"], ["prepare", "synth", "midi", "out"]):
        seen = []
        module = importlib.import_module(cli.COMMANDS[argv[0]][0])
        for fn in ("run", f"run_{argv[0]}"):
            monkeypatch.setattr(module, fn, lambda args, settings: seen.append(settings) or 0, raising=False)
        assert cli.main(["--set", f"model.weights={path}", *argv]) == 0
        assert seen[-1].model.units == load_settings().model.units != 8
        assert cli.main(["--model", str(path), *argv]) == 0
        assert seen[-1].model.units == 8
