"""The shipped weights (models/weights/kkoma.npz, the live model; kkoma_offline.npz, the offline model files get by
default; kkoma_harmonic.npz, with its harmonic branch; kkoma_pitch.npz, the opt-in pitch-shared files model, with its
models.toml tracker): they load with the shipped settings, stay small, and
transcribe the bundled example (our own piece, not in any training set) at least as well as when they were shipped
(golden figure with a tolerance: a regression in the weights, features, resampler or tracker shows up here)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kkoma.models.errors import KkomaError
from kkoma.models.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 0.05
#: name -> (load_settings arguments, onset F1 (50 ms) on examples/example.flac with those settings' thresholds,
#: measured when shipped)
SHIPPED = {
    "kkoma.npz": ({}, 0.800),
    "kkoma_offline.npz": ({"offline": True}, 0.847),
    "kkoma_harmonic.npz": ({"overrides": ["model.weights=models/weights/kkoma_harmonic.npz",
                                          "model.harmonic_units=16"]}, 0.843),
    "kkoma_pitch.npz": ({"model": "pitch", "offline": True}, 0.760),
}
#: The example's onset F1 per shipped model: the files above, and the ensemble of two of them.
GOLDEN = {**SHIPPED, "ensemble (offline + pitch)": ({"model": "ensemble"}, 0.862)}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_weights_load_with_the_shipped_settings_and_are_small(name):
    from kkoma.models.inference import load_weights

    s = load_settings(**SHIPPED[name][0])
    path = s.model.weights_path
    assert path.name == name
    assert path.exists(), "the shipped weights are missing"
    assert path.stat().st_size < 5 * 2 ** 20
    arrays, meta = load_weights(path, s)
    assert all(np.isfinite(a).all() for a in arrays.values())
    assert meta["summary"]["best_epoch"] >= 1  # trained, not exported from random initial weights


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_bundled_example_onset_f1_does_not_regress(name):
    mir_eval = pytest.importorskip("mir_eval")
    from kkoma.models.notes import notes_to_arrays, read_midi
    from kkoma.offline.transcribe import transcribe_file

    kwargs, shipped_f1 = GOLDEN[name]
    est = list(transcribe_file(ROOT / "examples" / "example.flac", load_settings(**kwargs)).notes)
    ref = read_midi(ROOT / "examples" / "example.mid")
    ri, rhz, _ = notes_to_arrays(ref)
    ei, ehz, _ = notes_to_arrays(est)
    _, _, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(ri, rhz, ei, ehz, onset_tolerance=0.05,
                                                                      offset_ratio=None)
    assert f1 >= shipped_f1 - TOLERANCE, f"onset F1 {f1:.3f}, shipped {shipped_f1:.3f}"


def test_live_weights_with_offline_settings_name_the_switch(tmp_path, capsys):
    """The live model given to files under the offline transform (or the reverse, live): one sentence that names
    transcribe.overrides, not just the first key of the transform that differs."""
    from kkoma.cli import main
    from kkoma.models.errors import KkomaError
    from kkoma.models.inference import load_weights

    live, offline = load_settings(), load_settings(offline=True)
    with pytest.raises(KkomaError, match="transcribe.overrides=\\[\\]"):
        load_weights(live.model.weights_path, offline)
    with pytest.raises(KkomaError, match="are for files only"):
        load_weights(offline.model.weights_path, live)
    # On the command line a weights file brings the transform it was trained with (models/catalog.py): the live
    # model on files is no error there, it gives the live model's notes.
    assert main(["--set", f"model.weights={live.model.weights_path}", "transcribe",
                 str(ROOT / "examples" / "example.flac"), "-o", str(tmp_path), "-q"]) == 0
    assert list(tmp_path.glob("*.mid"))


def test_ensemble_is_offline_and_pitch_averaged():
    """`--model ensemble`: the offline model's transform (transcribe.overrides) with its entry's tracker, its
    probabilities the mean of offline's and pitch's on the same features, its look-ahead pitch's; live refuses it in
    one sentence."""
    from kkoma.models.audio import load_audio
    from kkoma.models.cqt import CQT
    from kkoma.models.inference import EnsembleModel, StreamingModel, make_streaming_model
    from kkoma.models.pipeline import make_transcriber

    s, off, pitch = load_settings(model="ensemble"), load_settings(offline=True), load_settings(model="pitch")
    assert s.cqt == off.cqt and s.model.weights_path == off.model.weights_path
    assert (s.tracker.onset_threshold, s.tracker.frame_threshold) == (0.75, 0.4)  # models.toml, over the overrides'
    assert load_settings(model="ensemble", overrides=["tracker.onset_threshold=0.9"]).tracker.onset_threshold == 0.9
    assert [p.name for p in s.model.ensemble_paths] == ["kkoma_pitch.npz"]
    f = CQT(s).features(load_audio(ROOT / "examples" / "example.flac", s))
    m = make_streaming_model(s)
    assert isinstance(m, EnsembleModel) and m.lookahead_ms == StreamingModel(pitch).lookahead_ms
    got, a, b = m.predict(f), StreamingModel(off).predict(f), StreamingModel(pitch).predict(f)
    for k in ("onset", "frame", "velocity"):
        assert np.abs(got[k] - (a[k] + b[k]) / 2).max() <= 1e-6
    with pytest.raises(KkomaError, match="backward LSTM"):
        make_transcriber(s, live=True)


def test_live_ensemble_is_live_and_pitch_live_weighted():
    """`--model live-ensemble`: the live transform and tracker with its entry's onset threshold, its probabilities
    0.85 x live's + 0.15 x the pitch-shared live network's, its look-ahead live's; live accepts it."""
    from kkoma.models.audio import load_audio
    from kkoma.models.cqt import CQT
    from kkoma.models.inference import EnsembleModel, StreamingModel, make_streaming_model, member_settings
    from kkoma.models.pipeline import make_transcriber

    s, live = load_settings(model="live-ensemble"), load_settings()
    assert s.cqt == live.cqt and s.model.weights_path == live.model.weights_path
    assert (s.tracker.onset_threshold, s.tracker.frame_threshold) == (0.875, live.tracker.frame_threshold)
    assert [p.name for p in s.model.ensemble_paths] == ["kkoma_pitch_live.npz"]
    member = member_settings(s, s.model.ensemble_paths[0])
    assert member.model.backward_units == 0 and member.model.harmonic_units > 0
    f = CQT(s).features(load_audio(ROOT / "examples" / "example.flac", s))
    m = make_streaming_model(s)
    assert isinstance(m, EnsembleModel) and m.lookahead_ms == StreamingModel(live).lookahead_ms
    got, a, b = m.predict(f), StreamingModel(live).predict(f), StreamingModel(member).predict(f)
    for k in ("onset", "frame", "velocity"):
        assert np.abs(got[k] - (0.85 * a[k] + 0.15 * b[k])).max() <= 1e-5
    assert make_transcriber(s, live=True) is not None
    assert s.model.name == "kkoma.npz + kkoma_pitch_live.npz at 0.85 / 0.15"
    # Other files than the entry's get equal shares (the entry's were chosen for its own), unless given; shares
    # and tracker go together, on the one test (the entry's files are in force).
    plain = load_settings(model="live-ensemble", overrides=["model.ensemble=[]"])
    assert plain.model.ensemble_weights == () and plain.tracker == live.tracker
    other = load_settings(model="live-ensemble", overrides=['model.ensemble=["models/weights/kkoma_harmonic.npz"]'])
    assert other.model.ensemble_weights == () and other.tracker == live.tracker
    same = load_settings(model="live-ensemble",
                         overrides=[f"model.ensemble=[{str(s.model.ensemble_paths[0])!r}]"])
    assert same.model.ensemble_weights == (0.85, 0.15) and same.tracker == s.tracker
    assert load_settings(model="live-ensemble", overrides=['model.ensemble=["models/weights/kkoma_harmonic.npz"]',
                                                           "model.ensemble_weights=[2, 1]"]).model.ensemble_weights \
        == (2.0, 1.0)


def test_a_users_file_may_give_the_shares_for_the_files_model_names(tmp_path):
    """Keys checked together are checked as they end up: a --config file holding only model.ensemble_weights gives
    --model live-ensemble's shares (not a share-count error against config.toml's one network), and beats the
    entry's; its tracker stays, the files being the entry's."""
    cfg = tmp_path / "mine.toml"
    cfg.write_text("[model]\nensemble_weights = [0.7, 0.3]\n")
    s = load_settings(cfg, model="live-ensemble")
    assert s.model.ensemble_weights == (0.7, 0.3) and s.tracker.onset_threshold == 0.875
    with pytest.raises(ConfigError, match="gives 2 shares but the model has 1 network"):
        load_settings(cfg)
