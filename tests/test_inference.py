"""NumPy streaming inference == the TF model; streaming in any chunking == whole sequence; weights checks."""
from __future__ import annotations

import numpy as np
import pytest

from kkoma.models.errors import KkomaError
from kkoma.models.inference import StreamingModel, export_random_weights, load_weights, random_arrays
from kkoma.models.settings import ConfigError, load_settings

TINY = ["model.units=12", "model.input_units=20", "model.context_frames=3", "model.lookahead_frames=2",
        "model.harmonic_units=5", "model.harmonic_features=2"]
KEYS = ("onset", "frame", "velocity")
#: The pitch-shared files model's shape in small: harmonic branch with the octave below and the fifth, backward LSTM.
BACK_ARCH = ["model.harmonic_units=5", "model.harmonic_features=3", "model.harmonics=[0.5, 1, 1.5, 2, 3]",
             "model.backward_units=6", "model.backward_block_frames=20", "model.backward_context_frames=10"]


def _features(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 6, (n, 264)).astype(np.float32)


def _stream(model, f, rng, max_chunk=17):
    model.reset()
    parts, i = [], 0
    while i < len(f):
        k = int(rng.integers(0, max_chunk + 1))
        parts.append(model.process(f[i:i + k]))
        i += k
    parts.append(model.flush())
    return {k: np.concatenate([p[k] for p in parts]) for k in model.outputs}


@pytest.mark.parametrize("lookahead,context,harmonic", [(2, 3, 5), (0, 1, 5), (5, 2, 5), (2, 3, 0)])
def test_numpy_equals_tensorflow_in_any_chunking(lookahead, context, harmonic):
    pytest.importorskip("tensorflow")
    from kkoma.models import network

    s = load_settings(overrides=TINY + [f"model.lookahead_frames={lookahead}", f"model.context_frames={context}",
                                        f"model.harmonic_units={harmonic}", "model.harmonic_features=2"])
    m = network.build_model(s)
    rng = np.random.default_rng(lookahead)
    network.set_normalization(m, rng.uniform(0, 2, 264), rng.uniform(0.5, 2, 264))
    if harmonic:  # the branch's per-key head weights start at zero: give them values, so their path is compared
        for name in ("harmonic_onset", "harmonic_frame"):
            m.get_layer(name).set_weights([rng.normal(0, 0.5, (2, 1)).astype(np.float32)])
    f = _features(230, seed=lookahead)
    # TF on the whole piece in the training regime: R frames of silence appended, outputs delayed by R.
    fa, _ = network.align(f, {}, lookahead)
    ref = {k: np.asarray(v)[0, lookahead:] for k, v in m(fa[None]).items()}
    sm = StreamingModel(s, arrays=network.model_arrays(m))
    assert sm.outputs == KEYS == tuple(ref)
    whole = sm.predict(f)
    for trial in range(3):
        got = _stream(sm, f, np.random.default_rng(trial))
        assert tuple(got) == sm.outputs
        for k in sm.outputs:
            assert got[k].shape == (230, 88)
            assert np.abs(got[k] - ref[k]).max() <= 1e-4, k
            assert np.abs(got[k] - whole[k]).max() <= 1e-6, k
    for k in sm.outputs:
        assert np.abs(whole[k] - ref[k]).max() <= 1e-4


def test_output_delay_and_counters():
    s = load_settings(overrides=TINY + ["model.lookahead_frames=3"])
    sm = StreamingModel(s, arrays=random_arrays(s))
    f = _features(10)
    assert sm.process(f[:2])["onset"].shape == (0, 88)
    assert sm.process(f[2:4])["onset"].shape == (1, 88)   # 4 frames in, frame 0 out
    assert sm.process(f[4:10])["onset"].shape == (6, 88)
    assert (sm.frames_in, sm.frames_out) == (10, 7)
    assert sm.flush()["onset"].shape == (3, 88)
    assert sm.frames_out == 10
    with pytest.raises(KkomaError, match="reset"):
        sm.process(f)
    sm.reset()
    assert sm.flush()["onset"].shape == (0, 88)        # empty stream
    sm.reset()
    sm.process(f[:1])
    assert sm.flush()["onset"].shape == (1, 88)        # shorter than the look-ahead


def test_reset_forgets_state():
    s = load_settings(overrides=TINY)
    sm = StreamingModel(s, arrays=random_arrays(s))
    a = sm.predict(_features(50, 1))
    sm.process(_features(30, 2))
    sm.reset()
    b = sm.predict(_features(50, 1))
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k])


def test_missing_weights_say_how_to_train(tmp_path):
    s = load_settings(overrides=TINY)
    with pytest.raises(KkomaError, match="kkoma train") as e:
        StreamingModel(s, weights_path=tmp_path / "nope.npz")
    assert "nope.npz" in str(e.value)


def test_corrupt_weights(tmp_path):
    s = load_settings(overrides=TINY)
    p = tmp_path / "bad.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(KkomaError, match="cannot be read"):
        StreamingModel(s, weights_path=p)


@pytest.mark.parametrize("override,key", [("cqt.lookahead_ms=10", "cqt.lookahead_ms"),
                                          ("audio.hop_length=320", "audio.hop_length"),
                                          ("cqt.filter_scale=0.5", "cqt.filter_scale"),
                                          ("cqt.max_window_ms=60", "cqt.max_window_ms")])
def test_settings_mismatch_names_the_key(tmp_path, override, key):
    """The features a file was trained on must be the settings' (audio, cqt): a mismatch names the key."""
    s = load_settings(overrides=TINY)
    p = export_random_weights(tmp_path / "w.npz", s)
    load_weights(p, s)
    with pytest.raises(KkomaError, match=key.replace(".", r"\.")):
        StreamingModel(load_settings(overrides=TINY + [override]), weights_path=p)


@pytest.mark.parametrize("arch", [["model.lookahead_frames=4"], ["model.units=13", "model.input_units=7"],
                                  ["model.harmonic_units=7", "model.harmonic_features=3",
                                   "model.harmonics=[0.5, 1, 1.5, 2]"],
                                  ["model.harmonic_units=0", "model.context_frames=1"],
                                  BACK_ARCH])
def test_weights_file_carries_its_architecture(tmp_path, arch):
    """A weights file's settings are resolved once, by load_settings: named as the model (``--model FILE`` or
    ``--set model.weights=FILE``) under config.toml with no --set, the network is the file's and computes what the
    same weights compute in memory under the file's own settings. Loading itself adopts nothing: settings made for
    another file (or with a key set against the file) are refused, naming the key."""
    from kkoma.models.network import architecture

    s_file = load_settings(overrides=TINY + arch)
    p = export_random_weights(tmp_path / "w.npz", s_file, seed=3)
    for s_for in (load_settings(model=str(p)), load_settings(overrides=[f"model.weights={p}"])):
        sm = StreamingModel(s_for)
        assert architecture(sm.settings) == architecture(s_file)
        assert s_for.tracker == load_settings().tracker  # only what the file records comes from it
    ref = StreamingModel(s_file, arrays=random_arrays(s_file, seed=3))
    f = _features(260, seed=4)
    got, want = sm.predict(f), ref.predict(f)
    assert tuple(got) == tuple(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    load_weights(p, s_file)
    with pytest.raises(KkomaError, match="model weights.*trained with model"):  # settings of another file
        StreamingModel(load_settings(), weights_path=p)
    with pytest.raises(KkomaError, match="model weights.*trained with model"):  # train --init: as written
        load_weights(p, load_settings(overrides=TINY))


@pytest.mark.parametrize("section,key,value,loads", [("cqt", "max_window_ms", "inf", True),
                                                      ("cqt", "max_window_ms", "120", False),
                                                      ("model", "harmonic_units", "0", True),
                                                      ("model", "harmonic_units", "5", False)])
def test_weights_older_than_a_key_read_as_its_old_value(tmp_path, section, key, value, loads):
    """A weights file written before ``cqt.max_window_ms`` existed was made with uncapped windows (inf), one
    written before ``model.harmonic_units`` without the harmonic branch (0): a key left unset takes that value, one
    set to another is refused."""
    import json
    import zipfile

    old_value = {"max_window_ms": "inf"}.get(key, "0")
    s_old = load_settings(overrides=TINY + [f"{section}.{key}={old_value}"])
    p = export_random_weights(tmp_path / "w.npz", s_old)
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    del meta["settings"][section][key]
    old = tmp_path / "old.npz"
    np.savez(old, meta=np.array(json.dumps(meta)), **arrays)
    assert zipfile.is_zipfile(old)
    s = load_settings(overrides=TINY + [f"{section}.{key}={value}"])
    unset = [o for o in TINY if not o.startswith(f"{section}.{key}=")] + [f"model.weights={old}"]
    assert getattr(getattr(load_settings(overrides=unset), section), key) == float(old_value)  # the file's value
    if loads:
        load_weights(old, s)
    else:
        with pytest.raises(KkomaError, match=rf"{section}\.{key} = {old_value}"):
            load_weights(old, s)


@pytest.mark.parametrize("head", [False, True])
def test_weights_of_the_removed_offset_head(tmp_path, head):
    """Files written while the offset head existed record ``model.offset_head`` (every shipped one: false). Off, the
    file loads as before; on (with its arrays), loading refuses it in one sentence naming the key."""
    import json

    s = load_settings(overrides=TINY)
    p = export_random_weights(tmp_path / "w.npz", s)
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    meta["settings"]["model"]["offset_head"] = head
    if head:
        arrays.update(offset_kernel=np.zeros((12, 88), np.float32), offset_bias=np.zeros(88, np.float32))
    old = tmp_path / "old.npz"
    np.savez(old, meta=np.array(json.dumps(meta)), **arrays)
    if not head:
        a, _ = load_weights(old, s)
        assert set(a) == set(arrays)
        assert StreamingModel(s, weights_path=old).outputs == KEYS
        return
    with pytest.raises(KkomaError) as e:
        load_weights(old, s)
    msg = str(e.value)
    assert "model.offset_head = true" in msg and "no longer" in msg and msg.count(". ") == 0


def test_grown_weights_compute_the_old_model_exactly():
    """:func:`models.network.grow_arrays`: a model given the harmonic branch by ``train --init`` starts as the
    model it grew from (the branch's LSTM rows are zero), while the branch itself is live (its arrays random)."""
    from kkoma.models.network import grow_arrays

    s0 = load_settings(overrides=TINY + ["model.harmonic_units=0"])
    s1 = load_settings(overrides=TINY + ["model.harmonic_units=5", "model.harmonic_features=2"])
    old, fresh = random_arrays(s0, seed=1), random_arrays(s1, seed=2)
    grown = grow_arrays(fresh, old)
    assert set(grown) == set(fresh) and grown["lstm_kernel"].shape == fresh["lstm_kernel"].shape
    f = _features(120, 3)
    a = StreamingModel(s0, arrays=old).predict(f)
    b = StreamingModel(s1, arrays=grown).predict(f)
    c = StreamingModel(s1, arrays={**grown, "lstm_kernel": fresh["lstm_kernel"]}).predict(f)
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k])
        assert np.abs(c[k] - a[k]).max() > 1e-3  # the branch's rows do change the outputs once non-zero


def test_incomplete_weights_are_named(tmp_path):
    s = load_settings(overrides=TINY + ["model.harmonic_units=5"])
    arrays = random_arrays(s)
    del arrays["harmonic_bias"]
    with pytest.raises(KkomaError, match="harmonic_bias is missing"):
        StreamingModel(s, arrays=arrays)


def test_default_size_weights_are_small(tmp_path):
    s = load_settings()
    p = export_random_weights(tmp_path / "w.npz", s)
    sm = StreamingModel(s, weights_path=p)
    assert p.stat().st_size < 4_000_000
    assert sm.lookahead_ms == pytest.approx(s.model_lookahead_ms)
    out = sm.predict(_features(40))
    assert all(out[k].shape == (40, 88) and np.isfinite(out[k]).all() for k in KEYS)


# ---- the backward direction (offline models: a latency-controlled BiLSTM) ------------------------------------------
BACK = ["model.backward_units=6", "model.backward_block_frames=30", "model.backward_context_frames=10"]


@pytest.mark.parametrize("harmonic", [["model.harmonic_units=0"], ["model.harmonic_units=5"],
                                      ["model.harmonic_units=5", "model.harmonics=[0.5, 1, 1.5, 2, 3]"]])
def test_backward_blocks_equal_the_keras_model_on_each_block(harmonic):
    """The streaming model's outputs for a block are those of the Keras (training) model run over that block and
    its context as one window, from zero backward state at the window's end; in any chunking, and through the
    flush (the last block: the window ends with the stream's look-ahead silence)."""
    pytest.importorskip("tensorflow")
    from kkoma.models import network

    s = load_settings(overrides=TINY + BACK + harmonic)
    arrays = random_arrays(s, seed=4)
    m = network.build_model(s)
    network.set_model_arrays(m, arrays)
    R, B, span = 2, 30, 40
    f = _features(101, seed=5)
    fa, _ = network.align(f, {}, R)  # 103 steps
    sm = StreamingModel(s, arrays=arrays)
    whole = sm.predict(f)
    # The first block's window: steps 0..39 (h of the forward LSTM is zero at step 0 in both); its outputs for
    # steps R..B-1 are frames 0..B-R-1.
    first = {k: np.asarray(v)[0] for k, v in m(fa[None, :span]).items()}
    for k in KEYS:
        assert whole[k].shape == (101, 88)
        assert np.abs(whole[k][:B - R] - first[k][R:B]).max() <= 1e-4, k
    last = {k: np.asarray(v)[0] for k, v in m(fa[None]).items()}
    # Steps 90..102 are the stream's last backward run (3 blocks of 30 went before, 13 steps left, the flush's 2
    # silent ones included): in the whole-piece Keras run the backward LSTM also starts after step 102, and the
    # forward one has run from step 0 in both, so those outputs agree...
    for k in KEYS:
        assert np.abs(whole[k][88:] - last[k][90:]).max() <= 1e-4, k
    # ...and earlier frames differ from it: the block's backward run started from zero after its context.
    assert max(np.abs(whole[k][:88] - last[k][R:90]).max() for k in KEYS) > 1e-3
    for trial in range(3):
        got = _stream(sm, f, np.random.default_rng(trial), max_chunk=23)
        for k in KEYS:
            assert np.abs(got[k] - whole[k]).max() <= 1e-6, k


def test_backward_outputs_wait_for_their_block_and_context():
    s = load_settings(overrides=TINY + BACK)
    sm = StreamingModel(s, arrays=random_arrays(s))
    f = _features(100)
    assert sm.process(f[:39])["onset"].shape == (0, 88)   # block 0 (steps 0..29) needs steps up to 39
    assert sm.process(f[39:40])["onset"].shape == (28, 88)  # its 30 steps out, less the 2 look-ahead steps
    assert sm.process(f[40:70])["onset"].shape == (30, 88)
    assert (sm.frames_in, sm.frames_out, sm.steps_out) == (70, 58, 60)
    assert sm.process(f[70:100])["onset"].shape == (30, 88)  # block 60..89; steps 90..99 wait for more
    assert sm.flush()["onset"].shape == (12, 88)  # the look-ahead's 2 silent steps end the stream: one last run
    assert sm.frames_out == 100
    assert sm.lookahead_ms == pytest.approx(1000.0 * (2 + 40) * s.audio.hop_seconds)


def test_backward_reads_the_future_within_its_block_only():
    """A change at frame t moves the outputs of earlier frames of the blocks whose backward run reads it, and of no
    frame before them: the backward direction is real, and bounded by the block and its context."""
    s = load_settings(overrides=TINY + BACK)
    sm = StreamingModel(s, arrays=random_arrays(s, seed=2))
    f = _features(160, 6)
    g = f.copy()
    g[95] += 3.0  # step 97: in block 90..119 and in block 60..89's context (steps 90..99)
    a, b = sm.predict(f), sm.predict(g)
    diff = np.abs(a["frame"] - b["frame"]).max(axis=1)
    assert diff[:58].max() == 0.0  # frames of blocks that end before step 60 (frame 58)
    assert diff[58:95].max() > 1e-4  # the backward runs that read it reach back to their block's start


def test_grown_backward_weights_are_the_old_model_plus_the_backward_lstm():
    """:func:`models.network.grow_backward`: a model given a backward LSTM by ``train --init`` keeps every weight of
    the model it grew from; with the heads' rows for the backward LSTM zeroed it computes exactly that model, and
    those rows start non-zero (fresh), so the backward LSTM is trained from the first step."""
    from kkoma.models.network import grow_backward
    from kkoma.models.notes import N_KEYS

    s0 = load_settings(overrides=TINY)
    s1 = load_settings(overrides=TINY + BACK)
    old, fresh = random_arrays(s0, seed=1), random_arrays(s1, seed=2)
    grown = grow_backward(fresh, old)
    assert set(grown) == set(fresh) and all(grown[k].shape == fresh[k].shape for k in fresh)
    u, ub = 12, 6
    silent = {k: v.copy() for k, v in grown.items()}
    for k in ("onset_kernel", "frame_kernel", "velocity_kernel"):
        np.testing.assert_array_equal(grown[k][u:u + ub], fresh[k][u:u + ub])
        silent[k][u:u + ub] = 0.0
    np.testing.assert_array_equal(grown["frame_kernel"][-N_KEYS:], old["frame_kernel"][u:])
    f = _features(120, 3)
    a = StreamingModel(s0, arrays=old).predict(f)
    b = StreamingModel(s1, arrays=silent).predict(f)
    c = StreamingModel(s1, arrays=grown).predict(f)
    for k in KEYS:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6)
    assert np.abs(c["onset"] - a["onset"]).max() > 1e-3


def test_live_refuses_a_model_with_a_backward_lstm(tmp_path):
    from kkoma.realtime.engine import make_live_transcriber

    s = load_settings(overrides=TINY + BACK)
    path = export_random_weights(tmp_path / "offline.npz", s)
    with pytest.raises(KkomaError, match="backward LSTM.*for files"):
        make_live_transcriber(s.replace(model__weights=str(path)))


def test_ensemble_averages_its_members_in_any_chunking(tmp_path):
    """An ensemble of a forward-only model and one with a backward LSTM (model.ensemble): the mean of their outputs,
    frame by frame, in any chunking; its look-ahead and backward LSTM are the slower member's."""
    from kkoma.models.inference import EnsembleModel, make_streaming_model

    fwd = load_settings(overrides=TINY)
    back = load_settings(overrides=TINY + BACK)
    wf, wb = export_random_weights(tmp_path / "f.npz", fwd, seed=1), export_random_weights(tmp_path / "b.npz", back,
                                                                                           seed=2)
    s = load_settings(overrides=TINY + [f"model.weights={str(wf)!r}", f"model.ensemble=[{str(wb)!r}]"])
    m = make_streaming_model(s)
    assert isinstance(m, EnsembleModel) and m.backward_units == 6
    assert m.lookahead_ms == StreamingModel(back, wb).lookahead_ms
    f = _features(101, seed=3)
    want = {k: (StreamingModel(fwd, wf).predict(f)[k] + StreamingModel(back, wb).predict(f)[k]) / 2 for k in KEYS}
    whole = m.predict(f)
    for trial in range(3):
        got = _stream(m, f, np.random.default_rng(trial), max_chunk=23)
        for k in KEYS:
            assert whole[k].shape == (101, 88) and np.abs(whole[k] - want[k]).max() <= 1e-6, k
            assert np.abs(got[k] - whole[k]).max() <= 1e-6, k


def test_a_weighted_ensemble_gives_each_member_its_share_in_any_chunking(tmp_path):
    """model.ensemble_weights: the average weighted by the shares (normalised: 3 and 1 are 0.75 and 0.25), the same
    in any chunking; a share per network or the settings refuse it in one sentence."""
    from kkoma.models.inference import EnsembleModel, make_streaming_model

    fwd = load_settings(overrides=TINY)
    wa, wb = export_random_weights(tmp_path / "a.npz", fwd, seed=1), export_random_weights(tmp_path / "b.npz", fwd,
                                                                                           seed=2)
    s = load_settings(overrides=TINY + [f"model.weights={str(wa)!r}", f"model.ensemble=[{str(wb)!r}]",
                                        "model.ensemble_weights=[3, 1]"])
    m = make_streaming_model(s)
    assert isinstance(m, EnsembleModel) and np.allclose(m.weights, [0.75, 0.25])
    f = _features(77, seed=4)
    pa, pb = StreamingModel(fwd, wa).predict(f), StreamingModel(fwd, wb).predict(f)
    whole = m.predict(f)
    got = _stream(m, f, np.random.default_rng(0), max_chunk=19)
    for k in KEYS:
        want = 0.75 * pa[k] + 0.25 * pb[k]
        assert np.abs(whole[k] - want).max() <= 1e-6 and np.abs(got[k] - whole[k]).max() <= 1e-6, k
        assert np.abs(whole[k] - (pa[k] + pb[k]) / 2).max() > 1e-3, k  # the shares changed something
    # Members on threads of their own (a file's threaded stream): the same outputs, in any chunking.
    m.reset()
    m.parallel = True
    par = _stream(m, f, np.random.default_rng(0), max_chunk=19)  # the chunking of `got`
    assert m._pool is not None and all(np.array_equal(par[k], got[k]) for k in KEYS)
    with pytest.raises(ConfigError, match=r"model.ensemble_weights gives 1 share but the model has 2 networks "
                                          r"\(kkoma.npz \+ b.npz\): one share for model.weights"):
        load_settings(overrides=TINY + [f"model.ensemble=[{str(wb)!r}]", "model.ensemble_weights=[1]"])
    with pytest.raises(ConfigError, match="model.ensemble_weights"):
        load_settings(overrides=TINY + [f"model.ensemble=[{str(wb)!r}]", "model.ensemble_weights=[1, 0]"])
    with pytest.raises(ConfigError, match=r"model.ensemble_weights must be a list of numbers, not \['3', 1\]"):
        load_settings(overrides=TINY + [f"model.ensemble=[{str(wb)!r}]", "model.ensemble_weights=['3', 1]"])


def test_an_ensemble_member_on_other_features_is_one_sentence(tmp_path):
    from kkoma.models.inference import make_streaming_model

    fwd = load_settings(overrides=TINY)
    other = load_settings(overrides=TINY + ["cqt.lookahead_ms=100.0"])
    wf, wo = export_random_weights(tmp_path / "f.npz", fwd), export_random_weights(tmp_path / "o.npz", other)
    s = load_settings(overrides=TINY + [f"model.weights={str(wf)!r}", f"model.ensemble=[{str(wo)!r}]"])
    with pytest.raises(KkomaError, match=r"o\.npz was trained with cqt\.lookahead_ms = 100.0 but f\.npz with 0.0"):
        make_streaming_model(s)
