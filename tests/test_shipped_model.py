"""The shipped weights (models/weights/kkoma.npz): they load with the shipped settings, stay small, and transcribe the
bundled example (our own piece, not in any training set) at least as well as when they were shipped (golden figure
with a tolerance: a regression in the weights, features, resampler or tracker shows up here)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
S = load_settings()

#: onset F1 (50 ms) of the shipped weights + config.toml thresholds on examples/example.flac, measured when shipped
SHIPPED_ONSET_F1 = 0.757
TOLERANCE = 0.05


def test_weights_load_with_the_shipped_settings_and_are_small():
    from models.inference import load_weights

    path = S.model.weights_path
    assert path.exists(), "the shipped weights are missing"
    assert path.stat().st_size < 5 * 2 ** 20
    arrays, meta = load_weights(path, S)
    assert all(np.isfinite(a).all() for a in arrays.values())
    assert meta["summary"]["best_epoch"] >= 1  # trained, not exported from random initial weights


def test_bundled_example_onset_f1_does_not_regress():
    mir_eval = pytest.importorskip("mir_eval")
    from models.notes import notes_to_arrays, read_midi
    from offline.transcribe import transcribe_file

    est = list(transcribe_file(ROOT / "examples" / "example.flac", S).notes)
    ref = read_midi(ROOT / "examples" / "example.mid")
    ri, rhz, _ = notes_to_arrays(ref)
    ei, ehz, _ = notes_to_arrays(est)
    _, _, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(ri, rhz, ei, ehz, onset_tolerance=0.05,
                                                                      offset_ratio=None)
    assert f1 >= SHIPPED_ONSET_F1 - TOLERANCE, f"onset F1 {f1:.3f}, shipped {SHIPPED_ONSET_F1:.3f}"
