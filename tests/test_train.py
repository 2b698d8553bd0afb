"""Training end to end on a tiny synthetic dataset in the `kkoma prepare` format: the loss falls, checkpoints and the
exported weights load, resume continues the run, the CLI works."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from kkoma.models.settings import load_settings

pytest.importorskip("tensorflow")

TINY = ["model.units=24", "model.input_units=32", "model.window_frames=50", "model.lookahead_frames=2",
        "train.batch_size=4", "train.norm_pieces=4", "train.learning_rate=0.01", "train.patience=5",
        "model.harmonic_units=0", "train.selection=frames"]
# (Checkpoints by frame-level F1: the toy runs are too short for the onset head to pass the tracker's threshold, so
# their note-level score is 0 at every epoch; test_validation_scores_notes... checks note-level selection.)
#: The harmonic branch, small: on the toy task (no partials) it slows learning, so it is tested on its own.
BRANCH = ["model.harmonic_units=4", "model.harmonic_features=1"]


def make_dataset(root: Path, settings, n_train: int = 6, n_valid: int = 2, n_frames: int = 160, seed: int = 0) -> Path:
    """A learnable toy dataset: a sounding key lights its 3 CQT bins (more at the onset frame)."""
    rng = np.random.default_rng(seed)
    nb_ = settings.cqt.n_bins
    pieces = []
    for split, count in (("train", n_train), ("valid_pieces", n_valid), ("valid_soundfont", 1)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            n = int(n_frames + rng.integers(-30, 30))
            onset = np.zeros((n, 88), np.uint8)
            frame = np.zeros((n, 88), np.uint8)
            offset = np.zeros((n, 88), np.uint8)
            velocity = np.zeros((n, 88), np.uint8)
            for _ in range(n // 8):
                p, t0 = int(rng.integers(40, 48)), int(rng.integers(0, n - 5))
                t1 = min(n, t0 + int(rng.integers(10, 40)))
                if frame[t0, p]:
                    continue
                onset[t0, p] = 1
                frame[t0:t1, p] = 1
                offset[t1 - 1, p] = 1
                velocity[t0, p] = int(rng.integers(30, 120))
            feat = np.repeat(frame.astype(np.float32), 3, axis=1)[:, :nb_] * 3.0
            feat += np.repeat(onset.astype(np.float32) * velocity / 40.0, 3, axis=1)[:, :nb_]
            feat += rng.uniform(0, 0.5, feat.shape)
            pid = f"{split}_{i}"
            np.savez(root / split / f"{pid}.npz", features=feat.astype(np.float16), onset=onset, frame=frame,
                     offset=offset, velocity=velocity)
            pieces.append({"id": pid, "split": split, "file": f"{split}/{pid}.npz", "midi": None, "audio": None,
                           "soundfont": None, "augment": {}, "n_frames": n, "seconds": n / settings.audio.frame_rate})
    manifest = {"settings": {"audio": asdict(settings.audio), "cqt": asdict(settings.cqt),
                             "model": {"lookahead_frames": settings.model.lookahead_frames}},
                "pieces": pieces, "skipped": []}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from kkoma.offline.train import train

    s = load_settings(overrides=TINY + ["train.epochs=3", "train.steps_per_epoch=30"])
    root = tmp_path_factory.mktemp("train")
    ds = make_dataset(root / "ds", s)
    lines = []
    summary = train(ds, root / "run", s, log=lines.append, verbose=0)
    return s, ds, root / "run", summary, lines


def test_loss_falls_and_outputs_written(trained):
    s, ds, run, summary, lines = trained
    hist = summary["history"]
    assert len(hist) == 3 and summary["epochs_run"] == 3
    assert hist[-1]["loss"] < hist[0]["loss"]
    for split in ("valid_pieces", "valid_soundfont"):
        assert 0.0 <= hist[-1][f"val_{split}_frame_f1"] <= 1.0
    # The toy task is easy: the frame head has learned something.
    assert summary["best"]["val_valid_pieces_frame_f1"] > 0.25
    for f in ("kkoma.npz", "summary.json", "checkpoints/best.weights.h5", "checkpoints/last.weights.h5",
              "checkpoints/last.optimizer.npz", "checkpoints/state.json"):
        assert (run / f).exists(), f
    assert any((run / "logs").rglob("events.out.tfevents*"))
    assert any("epoch 1:" in line and "valid_pieces notes " in line for line in lines)
    assert any("checkpoints chosen by frame-level F1" in line for line in lines)


def test_exported_weights_load_and_match_best_checkpoint(trained):
    from kkoma.models import network
    from kkoma.models.inference import StreamingModel, load_weights

    s, ds, run, summary, _ = trained
    arrays, meta = load_weights(run / "kkoma.npz", s)
    assert meta["summary"]["best_epoch"] == summary["best_epoch"]
    assert meta["settings"]["model"]["lookahead_frames"] == s.model.lookahead_frames
    model = network.build_model(s)
    model.load_weights(run / "checkpoints" / "best.weights.h5")
    for k, v in network.model_arrays(model).items():
        np.testing.assert_array_equal(v, arrays[k])
    sm = StreamingModel(s, weights_path=run / "kkoma.npz")
    f = np.load(ds / "valid_pieces" / "valid_pieces_0.npz")["features"]
    out = sm.predict(f)
    assert out["onset"].shape == (f.shape[0], 88)


def test_existing_run_needs_resume_and_resume_continues(trained, tmp_path):
    import shutil

    from kkoma.models.errors import KkomaError
    from kkoma.offline.train import train

    s, ds, run, summary, _ = trained
    with pytest.raises(KkomaError, match="--resume"):
        train(ds, run, s, log=lambda m: None, verbose=0)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    s4 = s.replace(train__epochs="4")
    lines = []
    out = train(ds, copy, s4, resume=True, log=lines.append, verbose=0)
    assert out["epochs_run"] == 4 and len(out["history"]) == 4
    assert out["history"][:3] == summary["history"]
    assert any("resuming after epoch 3" in line for line in lines)
    # The learning curve: one row per epoch, training hours counted on across the resume.
    rows = [line.split("\t") for line in (copy / "learning_curve.tsv").read_text().splitlines()]
    assert rows[0][:4] == ["epoch", "hours", "cpu_hours", "val_score"] and len(rows) == 5
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    hours = [float(r[1]) for r in rows[1:]]
    assert hours == sorted(hours) and hours[0] > 0
    assert out["history"][3]["hours"] == pytest.approx(hours[3], abs=1e-4)


def test_resume_keeps_the_checkpoints_learning_rate_unless_given_one(trained, tmp_path):
    """The checkpoint's optimizer state resumes (step count, learning rate): a campaign resumed with
    ``--learning-rate`` runs at that rate and says so, and a later plain ``--resume`` stays at it instead of
    climbing back to ``train.learning_rate``."""
    import shutil

    import tensorflow as tf

    from kkoma.models import network
    from kkoma.offline.train import train
    from kkoma.offline.train_loop import make_optimizer

    s, ds, run, _, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ckpt = copy / "checkpoints" / "last.optimizer.npz"
    # Where Adam's step count and learning rate sit in the saved state: the run's optimizer (with mixed precision,
    # which a GPU switches on, a loss-scale wrapper's own variables come first) built the same way.
    mp = s.train.mixed_precision
    opt = make_optimizer(s, mp == "on" or (mp == "auto" and bool(tf.config.list_physical_devices("GPU"))))
    opt.build(network.build_model(s).trainable_variables)
    paths = [v.path for v in opt.variables]
    i_step = max(i for i, p in enumerate(paths) if p.endswith("/iteration"))
    i_rate = max(i for i, p in enumerate(paths) if p.endswith("/learning_rate"))

    def saved():
        with np.load(ckpt) as z:
            return int(z[f"arr_{i_step}"]), float(z[f"arr_{i_rate}"])

    steps, rate = saved()
    assert rate == pytest.approx(s.train.learning_rate)
    lower = s.train.learning_rate / 4
    lines = []
    train(ds, copy, s.replace(train__epochs="4"), resume=True, log=lines.append, verbose=0, resume_rate=lower)
    assert any(f"learning rate {s.train.learning_rate:g} -> {lower:g}" in line for line in lines)
    steps2, rate2 = saved()
    assert rate2 == pytest.approx(lower) and steps2 == steps + s.train.steps_per_epoch
    lines = []
    train(ds, copy, s.replace(train__epochs="5"), resume=True, log=lines.append, verbose=0)
    assert any(f"learning rate {lower:g} (the checkpoint's)" in line for line in lines)
    steps3, rate3 = saved()
    assert rate3 == pytest.approx(lower) and steps3 == steps2 + s.train.steps_per_epoch


def test_a_resumed_run_takes_the_rate_the_command_line_names():
    """`kkoma train --resume`: --learning-rate, else --set train.learning_rate, else the checkpoint's (None); a rate
    in a --config file or config.toml is a new run's, so it cannot reset a campaign's lowered rate."""
    from types import SimpleNamespace

    from kkoma.offline.train_cli import resume_learning_rate

    s = load_settings(overrides=["train.learning_rate=2e-4"])
    assert resume_learning_rate(SimpleNamespace(learning_rate=5e-5, overrides=[]), s) == 5e-5
    assert resume_learning_rate(SimpleNamespace(learning_rate=None, overrides=["train.learning_rate=2e-4"]), s) \
        == pytest.approx(2e-4)
    assert resume_learning_rate(SimpleNamespace(learning_rate=None, overrides=["train.epochs=9"]), s) is None


def test_pitch_shared_files_model_trains_resumes_and_loads_without_its_settings(trained, tmp_path):
    """The campaign's network in small (harmonic branch with the octave below and the fifth, backward LSTM over
    blocks): trains, resumes from its checkpoint, and its weights file loads under settings that say nothing of
    its architecture."""
    from kkoma.models.inference import StreamingModel
    from kkoma.offline.train import train

    _, ds, _, _, _ = trained
    arch = ["model.harmonic_units=4", "model.harmonic_features=2", "model.harmonics=[0.5, 1, 1.5, 2]",
            "model.backward_units=8", "model.backward_block_frames=30", "model.backward_context_frames=20"]
    s = load_settings(overrides=TINY + arch + ["train.epochs=1", "train.steps_per_epoch=15"])
    first = train(ds, tmp_path / "pitch", s, log=lambda m: None, verbose=0)
    lines = []
    out = train(ds, tmp_path / "pitch", s.replace(train__epochs="2"), resume=True, log=lines.append, verbose=0)
    assert any("resuming after epoch 1" in line for line in lines)
    assert out["history"][0] == first["history"][0] and len(out["history"]) == 2
    assert out["history"][1]["loss"] < out["history"][0]["loss"]
    sm = StreamingModel(load_settings(model=str(tmp_path / "pitch" / "kkoma.npz")))
    assert (sm.backward_units, sm.harmonic, list(sm.settings.model.harmonics)) == (8, True, [0.5, 1, 1.5, 2])
    f = np.load(ds / "valid_pieces" / "valid_pieces_0.npz")["features"]
    assert sm.predict(f)["onset"].shape == (f.shape[0], 88)


def test_dataset_settings_mismatch_is_named(tmp_path):
    from kkoma.models.errors import KkomaError
    from kkoma.offline.train import read_manifest

    s = load_settings(overrides=TINY)
    ds = make_dataset(tmp_path / "ds", s, n_train=1, n_valid=0)
    with pytest.raises(KkomaError, match=r"audio\.hop_length"):
        read_manifest(ds, s.replace(audio__hop_length="320"))


def test_cli_train_small(tmp_path, capsys):
    from kkoma.cli import main

    s = load_settings(overrides=TINY)
    ds = make_dataset(tmp_path / "ds", s, n_train=3, n_valid=1)
    args = [a for o in TINY for a in ("--set", o)]
    rc = main(args + ["train", str(ds), str(tmp_path / "run"), "--epochs", "1", "--steps-per-epoch", "2", "-q"])
    assert rc == 0
    assert (tmp_path / "run" / "kkoma.npz").exists()
    assert "best weights" in capsys.readouterr().out


def test_init_starts_from_given_weights(trained, tmp_path):
    """--init: a new run starts from a weights file (statistics included); with a vanishing learning rate (1e-30)
    nothing moves, so the exported weights are the initial ones exactly, and a run from random weights differs; the
    same holds when the new run has another look-ahead."""
    from kkoma.models.inference import load_weights
    from kkoma.offline.train import train

    s, ds, run, _, _ = trained
    s0 = s.replace(train__epochs="1", train__steps_per_epoch="2", train__learning_rate="1e-30")
    lines = []
    train(ds, tmp_path / "fine", s0, init=run / "kkoma.npz", log=lines.append, verbose=0)
    start, _ = load_weights(run / "kkoma.npz", s)
    got, _ = load_weights(tmp_path / "fine" / "kkoma.npz", s)
    for k in start:
        np.testing.assert_array_equal(got[k], start[k], err_msg=k)
    assert any("starting from the weights in" in line for line in lines)
    train(ds, tmp_path / "scratch", s0, log=lambda m: None, verbose=0)
    fresh, _ = load_weights(tmp_path / "scratch" / "kkoma.npz", s)
    assert not np.array_equal(fresh["lstm_kernel"], start["lstm_kernel"])
    # to another look-ahead (the offline-model path): the same start, recorded with the new look-ahead
    s4 = s0.replace(model__lookahead_frames="4")
    lines = []
    train(ds, tmp_path / "ahead", s4, init=run / "kkoma.npz", log=lines.append, verbose=0)
    got, meta = load_weights(tmp_path / "ahead" / "kkoma.npz", s4)
    assert meta["settings"]["model"]["lookahead_frames"] == 4
    for k in start:
        np.testing.assert_array_equal(got[k], start[k], err_msg=k)
    assert any("fine-tuning it to 4" in line for line in lines)


def test_harmonic_branch_trains(trained, tmp_path):
    """The model with the harmonic branch trains end to end: the loss falls and the
    exported weights load with the branch."""
    from kkoma.models.inference import load_weights
    from kkoma.offline.train import train

    _, ds, _, _, _ = trained
    s = load_settings(overrides=TINY + BRANCH + ["train.epochs=2", "train.steps_per_epoch=30"])
    summary = train(ds, tmp_path / "branch", s, log=lambda m: None, verbose=0)
    hist = summary["history"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    got, meta = load_weights(tmp_path / "branch" / "kkoma.npz", s)
    assert meta["settings"]["model"]["harmonics"] == list(s.model.harmonics)
    assert got["harmonic_kernel"].shape == (s.model.context_frames, 3 * len(s.model.harmonics), 4)


def test_init_without_the_harmonic_branch_grows_one(trained, tmp_path):
    """--init from weights without the harmonic branch: every array carries over, the branch's LSTM input rows start
    at zero (so the run starts from exactly that model), the branch's own weights are trained from there."""
    from kkoma.models.inference import export_random_weights, load_weights
    from kkoma.offline.train import train

    s_old, ds, _, _, _ = trained
    assert s_old.model.harmonic_units == 0
    s = load_settings(overrides=TINY + BRANCH)
    old_path = export_random_weights(tmp_path / "old.npz", s_old, seed=3)
    start, _ = load_weights(old_path, s_old)
    s0 = s.replace(train__epochs="1", train__steps_per_epoch="2", train__learning_rate="1e-30")
    lines = []
    train(ds, tmp_path / "grown", s0, init=old_path, log=lines.append, verbose=0)
    got, meta = load_weights(tmp_path / "grown" / "kkoma.npz", s0)
    assert meta["settings"]["model"]["harmonic_units"] == s.model.harmonic_units
    n_old = start["lstm_kernel"].shape[0]
    # Adam moves a weight by about the learning rate per step whatever its gradient: 1e-30 here, so "equal" and
    # "zero" are to 1e-20 (a zero the init did not set would be ~0.1).
    for k in start:
        if k != "lstm_kernel":
            np.testing.assert_allclose(got[k], start[k], rtol=1e-6, atol=1e-20, err_msg=k)
    np.testing.assert_allclose(got["lstm_kernel"][:n_old], start["lstm_kernel"], rtol=1e-6, atol=1e-20)
    assert np.abs(got["lstm_kernel"][n_old:]).max() < 1e-20 and got["lstm_kernel"].shape[0] > n_old
    assert {"harmonic_kernel", "harmonic_out_kernel"} <= set(got)
    assert any("has no harmonic branch; adding one" in line for line in lines)


def test_init_without_a_backward_lstm_grows_one_and_trains_it(trained, tmp_path):
    """--init from forward-only weights with model.backward_units > 0: every array carries over, the heads gain
    rows for the backward LSTM (fresh, non-zero); then a few steps train it and the exported weights load with
    it."""
    from kkoma.models.inference import load_weights
    from kkoma.offline.train import train

    s_old, ds, run, _, _ = trained
    assert s_old.model.backward_units == 0
    back = ["model.backward_units=5", "model.backward_block_frames=40", "model.backward_context_frames=10"]
    s = load_settings(overrides=TINY + back)
    start, _ = load_weights(run / "kkoma.npz", s_old)
    lines = []
    s0 = s.replace(train__epochs="1", train__steps_per_epoch="2", train__learning_rate="1e-30")
    train(ds, tmp_path / "grown", s0, init=run / "kkoma.npz", log=lines.append, verbose=0)
    got, meta = load_weights(tmp_path / "grown" / "kkoma.npz", s0)
    assert meta["settings"]["model"]["backward_units"] == 5
    u = start["lstm_recurrent"].shape[0]
    for k in start:  # see test_init_without_the_harmonic_branch_grows_one for the tolerances
        if k in ("onset_kernel", "velocity_kernel", "frame_kernel"):
            np.testing.assert_allclose(got[k][:u], start[k][:u], rtol=1e-6, atol=1e-20, err_msg=k)
            np.testing.assert_allclose(got[k][got[k].shape[0] - start[k].shape[0] + u:], start[k][u:], rtol=1e-6,
                                       atol=1e-20, err_msg=k)
            assert np.abs(got[k][u:u + 5]).max() > 1e-3, k
        else:
            np.testing.assert_allclose(got[k], start[k], rtol=1e-6, atol=1e-20, err_msg=k)
    assert got["backward_recurrent"].shape == (5, 20)
    assert any("has no backward LSTM; adding one" in line for line in lines)
    assert any("backward LSTM of 5 (inference blocks 40 + 10 frames)" in line for line in lines)
    s1 = s.replace(train__epochs="2", train__steps_per_epoch="20")
    summary = train(ds, tmp_path / "trained", s1, init=run / "kkoma.npz", log=lambda m: None, verbose=0)
    trained_arrays, _ = load_weights(tmp_path / "trained" / "kkoma.npz", s1)
    assert np.abs(trained_arrays["backward_recurrent"] - got["backward_recurrent"]).max() > 1e-4  # trained
    assert np.isfinite(summary["history"][-1]["loss"])


def test_init_from_other_features_recomputes_statistics(trained, tmp_path):
    """--init from a model trained on other features of the same shape (here cqt.max_window_ms): the network's
    weights carry over, the per-bin statistics are those of the new dataset, and the new weights record the new
    transform."""
    from kkoma.models.inference import load_weights
    from kkoma.offline.train import feature_stats, read_manifest, train

    s, _, run, _, _ = trained
    assert s.cqt.max_window_ms == 120
    sw = s.replace(cqt__max_window_ms="inf", train__epochs="1", train__steps_per_epoch="2",
                   train__learning_rate="1e-30")
    ds = make_dataset(tmp_path / "ds_plain", sw, seed=7)
    lines = []
    train(ds, tmp_path / "plain", sw, init=run / "kkoma.npz", log=lines.append, verbose=0)
    start, _ = load_weights(run / "kkoma.npz", s)
    got, meta = load_weights(tmp_path / "plain" / "kkoma.npz", sw)
    assert meta["settings"]["cqt"]["max_window_ms"] == float("inf")
    for k in start:
        if not k.startswith("norm_"):
            np.testing.assert_array_equal(got[k], start[k], err_msg=k)
    pieces = [p for p in read_manifest(ds, sw)["pieces"] if p["split"] == "train"]
    mean, _ = feature_stats(ds, pieces, sw.train.norm_pieces, sw.train.seed)
    np.testing.assert_allclose(got["norm_mean"], mean, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["norm_mean"], start["norm_mean"])
    assert any("other features (cqt.max_window_ms 120 -> inf)" in line for line in lines)


def test_spectral_envelope_is_bounded_and_smooth():
    from kkoma.offline.train import spectral_envelope

    rng = np.random.default_rng(3)
    curves = np.array([spectral_envelope(264, 36, 12.0, rng) for _ in range(200)])
    assert np.abs(curves).max() <= 12.0 and np.abs(curves).max() > 6.0
    # smooth: no step between neighbouring bins (a third of a semitone) of a dB or more
    assert np.abs(np.diff(curves, axis=1)).max() < 1.0
    assert curves.std(axis=0).min() > 1.0  # every bin is moved, not only some
    assert not spectral_envelope(264, 36, 0.0, rng).any()


def test_recolour_scales_magnitudes_exactly_and_keeps_silence():
    from kkoma.offline.train import recolour

    rng = np.random.default_rng(4)
    f = rng.uniform(0, 8, (50, 264)).astype(np.float32)
    f[:, :10] = 0.0                           # silent bins
    gain = rng.uniform(-12, 12, 264)
    g = recolour(f, gain)
    assert g.dtype == f.dtype and g.shape == f.shape
    np.testing.assert_allclose(np.expm1(g), np.expm1(f) * 10 ** (gain / 20), rtol=1e-4, atol=1e-6)
    assert not g[:, :10].any()
    np.testing.assert_allclose(recolour(f, np.zeros(264)), f, rtol=1e-6)


def test_crop_stream_recolours_and_rooms_features_only(tmp_path):
    from kkoma.offline.train import crop_stream

    s = load_settings(overrides=TINY)
    ds = make_dataset(tmp_path / "ds", s, n_train=3, n_valid=0)
    pieces = [p for p in json.loads((ds / "manifest.json").read_text())["pieces"] if p["split"] == "train"]
    plain = crop_stream(ds, pieces, 50, 2, 8, seed=5)
    off = crop_stream(ds, pieces, 50, 2, 8, seed=5, colour=(0.0, 12.0, 36))
    on = crop_stream(ds, pieces, 50, 2, 8, seed=5, colour=(1.0, 12.0, 36))
    changed = 0
    for _ in range(12):
        a, b, c = next(plain), next(off), next(on)
        for x, y, z in zip(a[1:], b[1:], c[1:]):  # labels: the same crops whatever the colour
            assert np.array_equal(x, y) and np.array_equal(x, z)
        assert np.array_equal(a[0], b[0])
        changed += not np.array_equal(a[0], c[0])
    assert changed == 12
    room = {"probability": 1.0, "rt60_s": (0.3, 1.0), "wet": (0.2, 0.5), "snr_db": (15.0, 30.0), "frame_rate": 100.0,
            "bin_hz": 27.5 * 2.0 ** (np.arange(264) / 36)}
    plain, roomy = crop_stream(ds, pieces, 50, 2, 8, seed=5), crop_stream(ds, pieces, 50, 2, 8, seed=5, room=room)
    for _ in range(12):
        a, r = next(plain), next(roomy)
        for x, y in zip(a[1:], r[1:]):
            assert np.array_equal(x, y)
        assert (r[0].astype(np.float32) >= a[0].astype(np.float32) - 1e-2).all()  # a room only adds power


def test_room_tail_decays_at_its_rt60_and_noise_sits_at_its_snr():
    """add_room on a tone held in one 1 kHz bin (no noise: SNR 300 dB): while held, the bin's power rises to
    (1 + wet) times the tone's; after, it falls by 60 dB in RT60; other bins stay silent. With noise, the silent
    bins' mean power is SNR below the crop's mean power."""
    from kkoma.offline.train import add_room

    hz = 1000.0 * 2.0 ** ((np.arange(72) - 36) / 36)
    m = np.zeros((300, 72))
    m[:100, 36] = 1000.0
    f = np.log1p(m).astype(np.float32)
    rng = np.random.default_rng(0)
    g = add_room(f, hz, 100.0, rt60_s=0.5, wet=0.3, snr_db=300.0, noise_tilt_db=0.0, rng=rng)
    p = np.expm1(g.astype(np.float64)) ** 2
    assert p[99, 36] == pytest.approx(1.3e6, rel=1e-3)
    assert 10 * np.log10(p[100, 36] / p[150, 36]) == pytest.approx(60.0, abs=0.5)  # 50 frames = 0.5 s
    assert p[:, np.arange(72) != 36].max() < 1e-20
    g = add_room(f, hz, 100.0, rt60_s=0.5, wet=0.0, snr_db=10.0, noise_tilt_db=0.0, rng=rng)
    noise = np.expm1(g[:, :30].astype(np.float64)) ** 2
    assert 10 * np.log10((m ** 2).mean() / noise.mean()) == pytest.approx(10.0, abs=0.3)
    assert not add_room(np.zeros_like(f), hz, 100.0, 0.5, 0.3, 10.0, 0.0, rng).any()


def test_weight_average_follows_its_formula_and_swaps_back():
    """avg = d * avg + (1 - d) * w with d = min(decay, (1 + n) / (10 + n)); swapped() lends the model the average
    and gives its own weights back after, even when the block raises."""
    import keras

    from kkoma.offline.train import _WeightAverage

    v = keras.Variable(np.zeros(3, np.float32))
    avg = _WeightAverage([v], decay=0.5)
    expect = np.zeros(3)
    for n, w in enumerate([1.0, 2.0, 4.0, 8.0]):
        v.assign(np.full(3, w, np.float32))
        avg.update()
        d = min(0.5, (1 + n) / (10 + n))
        expect = d * expect + (1 - d) * w
    np.testing.assert_allclose(avg.values[0], expect, rtol=1e-6)
    assert avg.updates == 4
    with pytest.raises(RuntimeError):
        with avg.swapped():
            np.testing.assert_allclose(v.numpy(), expect, rtol=1e-6)
            raise RuntimeError
    np.testing.assert_array_equal(v.numpy(), np.full(3, 8.0, np.float32))


def test_averaged_run_exports_the_average_and_resumes_it(trained, tmp_path):
    """With train.average_decay: the step's own weights are scored beside the average; the best checkpoint and the
    exported weights are the average (not the last step's weights); resume carries the average on. (Rooms on the fly
    are on too, to run them through the tf.data pipeline.)"""
    from kkoma.models import network
    from kkoma.models.inference import load_weights
    from kkoma.offline.train import train

    s, ds, _, _, _ = trained
    sa = s.replace(train__epochs="2", train__steps_per_epoch="10", train__average_decay="0.9",
                   train__room_probability="0.5")
    lines = []
    out = train(ds, tmp_path / "avg", sa, log=lines.append, verbose=0)
    assert all("val_raw_score" in h and np.isfinite(h["val_raw_score"]) for h in out["history"])
    assert any("score without averaging" in line for line in lines)
    assert any("rooms on 50%; weight average decay 0.9" in line for line in lines)
    with np.load(tmp_path / "avg" / "checkpoints" / "last.average.npz") as z:
        assert int(z["arr_0"]) == 20
    model = network.build_model(sa)
    model.load_weights(tmp_path / "avg" / "checkpoints" / "last.weights.h5")
    last = network.model_arrays(model)
    got, _ = load_weights(tmp_path / "avg" / "kkoma.npz", sa)
    if out["best_epoch"] == 2:
        assert not np.array_equal(got["lstm_kernel"], last["lstm_kernel"])
        model.load_weights(tmp_path / "avg" / "checkpoints" / "best.weights.h5")
        np.testing.assert_array_equal(network.model_arrays(model)["lstm_kernel"], got["lstm_kernel"])
    train(ds, tmp_path / "avg", sa.replace(train__epochs="3"), resume=True, log=lambda m: None, verbose=0)
    with np.load(tmp_path / "avg" / "checkpoints" / "last.average.npz") as z:
        assert int(z["arr_0"]) == 30


def test_validation_scores_notes_with_the_tracker_and_selects_by_them(trained, monkeypatch):
    """validate() reports note-level F1 (tracker + mir_eval against the labels' notes) beside the frame-level
    scores, and train.selection picks which the score is made of. A model that outputs the labels themselves
    scores (nearly) 1 on notes; one that never fires an onset scores 0."""
    import kkoma.offline.train as T
    from kkoma.models.inference import StreamingModel, load_weights

    s, ds, run, _, _ = trained
    arrays, _ = load_weights(run / "kkoma.npz", s)
    s = s.replace(train__selection="notes")
    manifest = json.loads((ds / "manifest.json").read_text())
    splits = {}
    for p in manifest["pieces"]:
        if p["split"].startswith("valid"):
            splits.setdefault(p["split"], []).append(p)
    m = T.validate(arrays, s, ds, splits)
    mean = lambda a, b: float(np.mean([(m[f"{k}_{a}"] + m[f"{k}_{b}"]) / 2 for k in splits]))  # noqa: E731
    assert m["score"] == pytest.approx(mean("note_onset_f1", "note_onoff_f1"))
    frames = T.validate(arrays, s.replace(train__selection="frames"), ds, splits)
    assert frames["score"] == pytest.approx(mean("onset_f1", "frame_f1"))
    # An oracle: the model's outputs are the piece's labels.
    load = T.load_piece
    last = {}

    def remember(dataset, piece):
        f, lab = load(dataset, piece)
        last.update(lab)
        return f, lab

    monkeypatch.setattr(T, "load_piece", remember)
    monkeypatch.setattr(StreamingModel, "predict", lambda self, f: {
        "onset": last["onset"].astype(np.float32), "frame": last["frame"].astype(np.float32),
        "velocity": last["velocity"] / np.float32(127.0)})
    oracle = T.validate(arrays, s, ds, splits)
    for split in splits:
        assert oracle[f"{split}_note_onset_f1"] > 0.97 and oracle[f"{split}_note_onoff_f1"] > 0.9, split
    monkeypatch.setattr(StreamingModel, "predict", lambda self, f: {
        "onset": np.zeros_like(last["onset"], np.float32), "frame": last["frame"].astype(np.float32),
        "velocity": last["velocity"] / np.float32(127.0)})
    mute = T.validate(arrays, s, ds, splits)
    assert all(mute[f"{split}_note_onset_f1"] == 0.0 for split in splits) and mute["score"] == 0.0


def test_validation_subsets_spread_over_the_split():
    from kkoma.offline.train import spread_subset

    split = [f"{c}{i}" for c in "ABCD" for i in range(25)]  # listed by composer, as manifests are
    sub = spread_subset(split, 8)
    assert len(sub) == 8 and sub == sorted(sub, key=split.index)  # distinct, in the split's order
    assert {s[0] for s in sub} == set("ABCD")  # every composer, not the first one's 8 pieces
    assert sub[0] == split[0]
    assert spread_subset(split, 0) == split and spread_subset(split, 200) == split
    assert spread_subset(split[:3], 3) == split[:3] and spread_subset([], 5) == []


def test_tune_scans_the_restrike_margin_on_a_spread_subset(trained, tmp_path, capsys):
    """kkoma tune on the toy run: references written from the labels, one row per grid point (restrike
    margins included, those that would pass 1 left out), the best named, pieces counted."""
    from kkoma.cli import main
    from kkoma.models.notes import Note, write_midi

    s, ds, run, _, _ = trained
    manifest = json.loads((ds / "manifest.json").read_text())
    fr = s.audio.frame_rate
    for p in manifest["pieces"]:
        with np.load(ds / p["file"]) as z:
            onset, frame, velocity = z["onset"], z["frame"], z["velocity"]
        notes = []
        for t, k in zip(*np.nonzero(onset)):
            end = t + 1
            while end < len(frame) and frame[end, k]:
                end += 1
            notes.append(Note(int(k) + 21, t / fr, end / fr, int(velocity[t, k])))
        p["midi"] = str(tmp_path / f"{p['id']}.mid")
        write_midi(notes, p["midi"], s)
    copy = tmp_path / "ds"
    copy.mkdir()
    for split in ("valid_pieces", "valid_soundfont"):
        (copy / split).symlink_to(ds / split)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    sets = [a for o in TINY for a in ("--set", o)] + ["--set", "transcribe.overrides=[]"]
    assert main([*sets, "tune", str(copy), str(run / "kkoma.npz"), "--max-pieces", "1", "--onset", "0.3", "0.9",
                 "--frame", "0.3", "--hold", "0", "--restrike", "0", "0.2"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("onset_threshold")]
    assert len(rows) == 3  # 0.9 + 0.2 > 1 is left out
    assert sum("restrike_margin 0.20" in r for r in rows) == 1
    assert "best on valid_pieces (1 pieces)" in out
    # without --restrike: the settings' own margin (0 for these)
    assert main([*sets, "tune", str(copy), str(run / "kkoma.npz"), "--onset", "0.5", "--frame", "0.3",
                 "--hold", "0"]) == 0
    out = capsys.readouterr().out
    assert "restrike_margin 0.00" in out and "best on valid_pieces (2 pieces)" in out
