"""Settings: config.toml loads into frozen dataclasses; wrong keys/types/values get one sentence naming the key."""
import dataclasses
import math

import pytest

from kkoma.models.settings import ConfigError, load_settings


def test_defaults_load_and_derive():
    s = load_settings()
    assert s.audio.frame_rate == s.audio.sample_rate / s.audio.hop_length
    assert s.cqt.fmin == pytest.approx(27.5)
    assert s.cqt.n_bins == 88 * 3 and s.cqt.bins_per_octave == 36
    assert s.model_lookahead_ms == pytest.approx(1000 * s.model.lookahead_frames * s.audio.hop_length
                                                 / s.audio.sample_rate)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.audio.sample_rate = 1


def test_user_file_changes_only_its_keys(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text("[tracker]\nonset_threshold = 0.6\n")
    s = load_settings(f)
    assert s.tracker.onset_threshold == 0.6
    assert s.audio == load_settings().audio


def test_overrides_parse_toml_values():
    s = load_settings(overrides=["cqt.lookahead_ms=inf", "midi.port_name=Synth A", "live.display=false",
                                 "audio.hop_length=320"])
    assert math.isinf(s.cqt.lookahead_ms) and s.cqt.centered
    assert s.midi.port_name == "Synth A" and s.live.display is False and s.audio.frame_rate == 50.0


@pytest.mark.parametrize("override, message", [
    ("cqt.nbins=3", "unknown key cqt.nbins; the keys of \\[cqt\\] are"),
    ("cqtt.n_bins=3", "unknown section \\[cqtt\\]"),
    ("audio.sample_rate=fast", "audio.sample_rate must be an integer from 8000 to 96000 Hz"),
    ("audio.sample_rate=16000.5", "audio.sample_rate must be an integer"),
    ("tracker.onset_threshold=1.5", "tracker.onset_threshold must be a number from 0.0 to 1.0"),
    ("midi.api=pulse", "midi.api must be one of 'auto', 'alsa', 'jack', 'coremidi', 'winmm'"),
    ("midi.channel=0", "midi.channel must be an integer from 1 to 16"),
    ("live.display=3", "live.display must be true or false"),
    ("tracker.frame_threshold=0.95", "tracker.frame_threshold must not exceed tracker.onset_threshold"),
    ("tracker.restrike_margin=0.2", "tracker.onset_threshold \\+ tracker.restrike_margin must not exceed 1"),
    ("cqt.n_bins=400", "below the Nyquist frequency"),
    ("cqt.decimation_taps=30", "cqt.decimation_taps must be odd"),
    ("nodot=1", "must look like section.key=value"),
    ("model.ensemble=[1]", "model.ensemble must be a list of strings, not \\[1\\]"),
    ('model.ensemble=["models/weights/kkoma_pitch.npz", 2]', "model.ensemble must be a list of strings"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_settings(overrides=[override])
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[audio\nsample_rate = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[audio]\nsamplerate = 44100\n")
    with pytest.raises(ConfigError, match="unknown key audio.samplerate"):
        load_settings(typo)
    flat = tmp_path / "flat.toml"
    flat.write_text("model = 3\n")  # merged with --set's [model] it would read as a missing key
    with pytest.raises(ConfigError, match=r"flat.toml: \[model\] must be a table of keys"):
        load_settings(flat, ["model.units=64"])
    utf16 = tmp_path / "utf16.toml"
    utf16.write_text("[tracker]\nonset_threshold = 0.8\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_settings(utf16)


# ---- the offline profile (transcribe.overrides) -------------------------------------------------------------------
def _profile(s):
    from kkoma.models.settings import parse_override

    return [parse_override(o) for o in s.transcribe.overrides]


def test_offline_settings_take_the_profile_and_live_ones_do_not():
    live, off = load_settings(), load_settings(offline=True)
    assert _profile(live), "config.toml names no offline settings"
    for section, key, value in _profile(live):
        got = getattr(getattr(off, section), key)
        assert got == (float(value) if isinstance(got, float) else value), f"{section}.{key}"
    assert any(getattr(getattr(live, sec), k) != getattr(getattr(off, sec), k) for sec, k, _ in _profile(live)), \
        "the profile changes nothing"
    # Everything the profile does not name is the live value.
    named = {(sec, k) for sec, k, _ in _profile(live)}
    for sec in ("audio", "cqt", "model", "tracker"):
        for f in dataclasses.fields(getattr(live, sec)):
            if (sec, f.name) not in named:
                assert getattr(getattr(off, sec), f.name) == getattr(getattr(live, sec), f.name)


def test_users_file_and_set_win_over_the_profile(tmp_path):
    section, key, _ = _profile(load_settings())[0]
    f = tmp_path / "mine.toml"
    f.write_text('[model]\nweights = "mine.npz"\n[cqt]\nlookahead_ms = 7.0\n')
    s = load_settings(f, ["cqt.max_window_ms=99"], offline=True)
    assert s.model.weights == "mine.npz" and s.cqt.lookahead_ms == 7.0 and s.cqt.max_window_ms == 99.0
    # An empty profile: files get exactly the live settings.
    assert load_settings(overrides=["transcribe.overrides=[]"], offline=True) == load_settings(
        overrides=["transcribe.overrides=[]"])
    # A profile of the user's own.
    s = load_settings(overrides=['transcribe.overrides=["tracker.onset_threshold=0.6"]'], offline=True)
    assert s.tracker.onset_threshold == 0.6 and s.cqt == load_settings().cqt


def test_keys_checked_together_are_checked_on_the_settings_files_get():
    """A --set that is valid for the offline model's tracker (onset 0.8 + re-strike 0.15) is not refused for files
    because the live tracker (0.9) would refuse it; live still refuses it."""
    assert load_settings(overrides=["tracker.restrike_margin=0.15"], offline=True).tracker.restrike_margin == 0.15
    with pytest.raises(ConfigError, match=r"\(0.9 \+ 0.15\)"):
        load_settings(overrides=["tracker.restrike_margin=0.15"])


def test_model_beats_a_users_files_model_keys_and_set_beats_both(tmp_path):
    """--model names the model over a --config file's model.weights / model.ensemble (the file holds settings),
    with the model's tracker; --set still wins over --model."""
    f = tmp_path / "mine.toml"
    f.write_text('[model]\nweights = "models/weights/kkoma_harmonic.npz"\nensemble = ["x.npz"]\n')
    s = load_settings(f, model="pitch", offline=True)
    assert s.model.name == "kkoma_pitch.npz" and s.tracker.onset_threshold == 0.85
    s = load_settings(f, ['model.ensemble=[]'], model="live-ensemble")
    assert s.model.name == "kkoma.npz" and s.model.ensemble == ()


def test_network_keys_false_leaves_out_the_users_network_keys(tmp_path):
    """load_settings(network_keys=False), a live session's files model: the --config file's and --set's
    model.weights / ensemble / ensemble_weights are the live model's, every other key still applies."""
    f = tmp_path / "mine.toml"
    f.write_text('[model]\nensemble_weights = [0.7, 0.3]\n[tracker]\nmin_ioi_ms = 40.0\n')
    over = ['model.ensemble=["models/weights/kkoma_pitch_live.npz"]', "tracker.min_duration_ms=30.0"]
    s = load_settings(f, over, offline=True, network_keys=False)
    want = load_settings(overrides=["tracker.min_ioi_ms=40.0", "tracker.min_duration_ms=30.0"], offline=True)
    assert dataclasses.replace(s, source=want.source) == want


@pytest.mark.parametrize("profile, message", [
    ('["nodot"]', "transcribe.overrides: override 'nodot' must look like section.key=value"),
    ('["cqt.nbins=3"]', "transcribe.overrides: 'cqt.nbins=3' does not name a setting"),
    ('["transcribe.jobs=1"]', "does not name a setting outside \\[transcribe\\]"),
    ('["tracker.onset_threshold=2"]', "transcribe.overrides: tracker.onset_threshold must be a number"),
])
def test_bad_profile_names_the_key(profile, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides=[f"transcribe.overrides={profile}"], offline=True)


def test_relative_weights_path_is_looked_up_here_then_in_the_repository(tmp_path, monkeypatch):
    """`--set model.weights=run/kkoma.npz` means the file in the current folder when it is there; config.toml's own
    relative paths (models/weights/...) still find the shipped files from any folder."""
    from kkoma.models.settings import PACKAGE_ROOT

    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.model.weights_path == PACKAGE_ROOT / s.model.weights
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "kkoma.npz").write_bytes(b"x")
    assert load_settings(overrides=["model.weights=run/kkoma.npz"]).model.weights_path == tmp_path / "run" / "kkoma.npz"


def test_campaign_settings_load_and_say_which_model_they_train():
    """offline/campaigns/*.toml are --config files on top of config.toml: each loads, and the pitch-shared pair
    trains the same shared front end, for files (a backward LSTM, with --offline) and for live (forward only)."""
    from pathlib import Path

    campaigns = sorted((Path(__file__).resolve().parents[1] / "offline" / "campaigns").glob("*.toml"))
    assert {p.name for p in campaigns} >= {"pitch_files.toml", "pitch_live.toml"}
    loaded = {p.stem: load_settings(p, weights_settings=False) for p in campaigns}
    files = load_settings(campaigns[0].parent / "pitch_files.toml", offline=True, weights_settings=False)
    live = loaded["pitch_live"]
    assert files.model.backward_units > 0 and live.model.backward_units == 0
    assert files.model.harmonic_units == live.model.harmonic_units > 0
    assert files.model.harmonics == live.model.harmonics
    assert live.cqt == load_settings(weights_settings=False).cqt  # the live transform
