"""The Keras model: shapes, causality, look-ahead alignment, export round trip."""
from __future__ import annotations

import numpy as np
import pytest

from kkoma.models.settings import load_settings

pytest.importorskip("tensorflow")

TINY = ["model.units=12", "model.input_units=20", "model.context_frames=3", "model.lookahead_frames=2",
        "model.harmonic_units=5", "model.harmonic_features=2"]


@pytest.fixture(scope="module")
def tiny():
    from kkoma.models import network

    s = load_settings(overrides=TINY)
    m = network.build_model(s)
    rng = np.random.default_rng(0)
    network.set_normalization(m, rng.uniform(0, 2, 264), rng.uniform(0.5, 2, 264))
    return s, m


def test_shapes_and_ranges(tiny):
    s, m = tiny
    x = np.random.default_rng(1).uniform(0, 5, (2, 37, s.cqt.n_bins)).astype(np.float32)
    y = m(x)
    assert set(y) == {"onset", "frame", "velocity"}
    for v in y.values():
        v = np.asarray(v)
        assert v.shape == (2, 37, 88) and v.dtype == np.float32 and (v >= 0).all() and (v <= 1).all()


def test_model_is_causal(tiny):
    """Changing frame t never changes outputs before step t (look-ahead comes only from the label delay)."""
    s, m = tiny
    x = np.random.default_rng(2).uniform(0, 5, (1, 40, s.cqt.n_bins)).astype(np.float32)
    y0 = {k: np.asarray(v) for k, v in m(x).items()}
    x2 = x.copy()
    x2[0, 25:] += 3.0
    y1 = {k: np.asarray(v) for k, v in m(x2).items()}
    for k in y0:
        np.testing.assert_allclose(y0[k][0, :25], y1[k][0, :25], atol=1e-6)
        assert np.abs(y0[k][0, 25:] - y1[k][0, 25:]).max() > 1e-4


def test_harmonic_index_points_at_each_partial():
    """Each key's patch: one semitone of bins (3) around every harmonic h, centred within half a bin of h x the
    key's frequency; bins off either end of the transform are -1 (read as zero), and only those."""
    from kkoma.models.cqt import CQT
    from kkoma.models.network import harmonic_index

    s = load_settings()
    idx = harmonic_index(s)
    hs = np.asarray(s.model.harmonics)
    w = 3
    assert idx.shape == (88, len(hs) * w)
    freqs = CQT(s).bank.freqs
    half_bin = 0.5 / s.cqt.bins_per_octave  # [octaves]
    for key in range(88):
        f_key = 440.0 * 2 ** ((key + 21 - 69) / 12)
        for j, h in enumerate(hs):
            patch = idx[key, j * w:(j + 1) * w]
            want = np.log2(h * f_key / s.cqt.fmin) * s.cqt.bins_per_octave  # fractional bin of the partial
            for b, step in zip(patch, (-1, 0, 1)):
                target = int(round(want)) + step
                if 0 <= target < 264:
                    assert b == target and abs(np.log2(freqs[b] / (h * f_key)) - step / 36) <= half_bin + 1e-9
                else:
                    assert b == -1
    assert (idx[0, :3] == [-1, -1, -1]).all() and (idx[87, -3:] == -1).all()


def test_align_delays_labels_and_pads_features():
    from kkoma.models.network import align

    f = np.arange(10, dtype=np.float32).reshape(5, 2)
    lab = {"onset": np.eye(5, 88, dtype=np.uint8)}
    fa, la = align(f, lab, 2)
    assert fa.shape == (7, 2) and (fa[5:] == 0).all() and (fa[:5] == f).all()
    assert la["onset"].shape == (7, 88) and (la["onset"][:2] == 0).all() and (la["onset"][2:] == lab["onset"]).all()


def test_export_round_trip(tiny, tmp_path):
    from kkoma.models import network
    from kkoma.models.inference import load_weights

    s, m = tiny
    p = network.export_npz(m, tmp_path / "w.npz", s, {"hello": 1})
    arrays, meta = load_weights(p, s)
    for k, v in network.model_arrays(m).items():
        np.testing.assert_array_equal(arrays[k], v)
    assert meta["summary"] == {"hello": 1}
    assert meta["settings"]["model"]["units"] == 12
    assert network.count_params(arrays) == sum(int(np.prod(w.shape)) for w in m.trainable_weights)
