"""`kkoma prepare`: FluidSynth rendering and its measured onset offset, splits, shards, MAESTRO layout, bad input,
resume and interruption (offline/synth.py, offline/prepare.py, offline/prepare_cli.py).

Rendering uses the small TimGM6mb soundfont for training and FluidR3_GM as the held-out one (both load in well under
a second); pieces are a few seconds long.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf

from kkoma.models.errors import KkomaError
from kkoma.models.notes import read_midi
from kkoma.models.settings import load_settings

TIM = "/usr/share/sounds/sf2/TimGM6mb.sf2"
FLUID = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
pytest.importorskip("fluidsynth", reason="pyfluidsynth / libfluidsynth not installed")
needs_sf = pytest.mark.skipif(not (Path(TIM).is_file() and Path(FLUID).is_file()),
                              reason="soundfonts missing (apt-get install fluid-soundfont-gm timgm6mb-soundfont)")


def _settings(*extra):
    return load_settings(overrides=[f'data.soundfonts=["{TIM}"]', f'data.holdout_soundfont="{FLUID}"',
                                    "data.holdout_piece_fraction=0.3", "augment.probability=1.0",
                                    "data.tail_seconds=0.5", *extra])


def write_midi_file(path: Path, notes: list[tuple[int, float, float, int]], pedal: list[tuple[float, int]] = ()):
    """A type-1 MIDI file at 120 bpm (1 tick = 1 ms with 500 ticks per beat) from (pitch, on, off, velocity)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ev = []
    for p, on, off, v in notes:
        ev.append((on, 1, mido.Message("note_on", note=p, velocity=v)))
        ev.append((off, 0, mido.Message("note_off", note=p, velocity=0)))
    for t, val in pedal:
        ev.append((t, 0, mido.Message("control_change", control=64, value=val)))
    ev.sort(key=lambda e: (e[0], e[1]))
    mid = mido.MidiFile(ticks_per_beat=500)
    tr = mido.MidiTrack()
    mid.tracks.append(tr)
    tr.append(mido.Message("program_change", program=40))  # a violin: the renderer must play a piano anyway
    last = 0
    for t, _, msg in ev:
        tick = int(round(t * 1000))
        tr.append(msg.copy(time=tick - last))
        last = tick
    mid.save(path)


def _scale(start: float, pitches, step=0.25, dur=0.2, vel=80):
    return [(p, start + i * step, start + i * step + dur, vel) for i, p in enumerate(pitches)]


@pytest.fixture
def midi_dir(tmp_path):
    root = tmp_path / "midi"
    write_midi_file(root / "Bach" / "Fugue" / "bwv_1" / "PlayerA.mid", _scale(0.3, [60, 64, 67, 72, 76]),
                    pedal=[(0.4, 127), (1.0, 0)])
    write_midi_file(root / "Chopin" / "Etude" / "op_10_1" / "PlayerB.mid", _scale(0.2, [48, 55, 60, 67, 96], vel=100))
    write_midi_file(root / "Liszt" / "Sonata" / "1st" / "PlayerC.mid", _scale(0.25, [36, 43, 50, 57]))
    write_midi_file(root / "Liszt" / "Sonata" / "1st_no_repeat" / "PlayerD.mid", _scale(0.25, [38, 45, 52]))
    return root


# ----------------------------------------------------------------------------------------------------------------
# Renderer
# ----------------------------------------------------------------------------------------------------------------
def test_audible_onset_of_a_tone_burst():
    from kkoma.offline.synth import audible_onset

    sr = 16000
    x = np.zeros(sr, np.float32)
    t = np.arange(4000) / sr
    x[5000:9000] = np.sin(2 * np.pi * 110 * t) * np.exp(-t * 5)
    assert abs(audible_onset(x, sr) - 5000) <= 16  # within 1 ms whatever the waveform phase
    assert audible_onset(np.zeros(100, np.float32), sr) == -1


@needs_sf
def test_renderer_offset_is_measured_and_removed():
    from kkoma.offline.synth import MidiEvent, Renderer, audible_onset, measure_onset_offset

    sr = 16000
    with Renderer(TIM, sr, 0.8) as r:
        offset = measure_onset_offset(r, n_notes=16, seed=1)
        assert 0.0 < offset < 0.015  # a sampled piano sounds a few ms after its note-on, never before
        # a note at a known time: its audible onset, less the measured offset, lands on the MIDI time
        for t0 in (0.3, 0.3 + 37 / sr):
            audio = r.render([MidiEvent(t0, "on", 0, 72, 90), MidiEvent(t0 + 0.3, "off", 0, 72, 0)], 0.8)
            assert len(audio) == int(0.8 * sr)
            assert audible_onset(audio, sr) / sr - offset == pytest.approx(t0, abs=0.003)
        # the piece before leaves nothing behind (no pedal, no ringing voices)
        r.render([MidiEvent(0.0, "cc", 0, 64, 127), MidiEvent(0.01, "on", 0, 40, 127)], 0.2)
        assert not np.any(r.render([], 0.1))


@needs_sf
def test_missing_soundfont_or_fluidsynth_says_what_to_install(midi_dir, tmp_path, monkeypatch):
    from kkoma.offline import synth
    from kkoma.offline.prepare import prepare_synth

    with pytest.raises(KkomaError, match="apt-get install fluidsynth fluid-soundfont-gm"):
        prepare_synth(midi_dir, tmp_path / "ds", _settings(), soundfonts=[str(tmp_path / "no.sf2")])
    import builtins

    real_import = builtins.__import__

    def no_fluidsynth(name, *a, **k):
        if name == "fluidsynth":
            raise ImportError("no libfluidsynth")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_fluidsynth)
    with pytest.raises(KkomaError, match="apt-get install fluidsynth fluid-soundfont-gm"):
        synth._fluidsynth()


# ----------------------------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------------------------
def test_work_key_folds_repeat_variants_and_holdout_is_by_work():
    from kkoma.offline.prepare import holdout_works, piece_id, work_key

    assert work_key(Path("Beethoven/Piano_Sonatas/17-1_no_repeat/X.mid")) == "Beethoven/Piano_Sonatas/17-1"
    assert work_key(Path("Beethoven/Piano_Sonatas/24-1_no_2_repeat/X.mid")) == "Beethoven/Piano_Sonatas/24-1"
    assert work_key(Path("Schumann/Toccata_repeat/X.mid")) == "Schumann/Toccata"
    assert piece_id(Path("Haydn/Sonatas/6-1/Chen C01.mid")) == "Haydn__Sonatas__6-1__Chen_C01"
    works = [f"w{i}" for i in range(400)]
    held = holdout_works(works, 1234, 0.1)
    assert 20 < len(held) < 60 and held == holdout_works(works, 1234, 0.1) != holdout_works(works, 1, 0.1)
    assert len(holdout_works(["a", "b"], 1234, 0.01)) == 1 and len(holdout_works(["a", "b"], 1234, 0.9)) == 1
    assert holdout_works(works, 1234, 0.0) == set()


def test_plan_keeps_held_out_works_and_soundfont_out_of_train(midi_dir):
    from kkoma.offline.prepare import plan_synth

    s = _settings()
    tasks = plan_synth(midi_dir, s, [TIM, FLUID], FLUID)
    train = [t for t in tasks if t.split == "train"]
    valid = [t for t in tasks if t.split != "train"]
    assert train and valid
    assert all(t.soundfont == TIM and t.augment == "train" for t in train)
    assert {t.work for t in train}.isdisjoint({t.work for t in valid})
    assert {t.split for t in valid} == {"valid_pieces", "valid_soundfont", "valid_room"}
    for t in valid:
        assert t.soundfont == (TIM if t.split == "valid_pieces" else FLUID)
        assert t.augment == ("room" if t.split == "valid_room" else "none")
    # both Liszt performances (a work and its no-repeat variant) fall on the same side
    liszt = {t.split == "train" for t in tasks if t.work == "Liszt/Sonata/1st"}
    assert len(liszt) == 1
    # --max-pieces takes every work once before any twice
    assert len({t.work for t in plan_synth(midi_dir, s, [TIM], FLUID, max_pieces=3)}) == 3
    with pytest.raises(KkomaError, match="training soundfont"):
        plan_synth(midi_dir, s, [FLUID], FLUID)


def test_plan_records_absolute_paths(midi_dir, monkeypatch):
    """A folder given relative to the current one is recorded absolute, so the manifest can be read from anywhere;
    the plan itself does not depend on how the folder was named."""
    from kkoma.offline.prepare import plan_synth

    s = _settings()
    monkeypatch.chdir(midi_dir.parent)
    rel = plan_synth(Path(midi_dir.name), s, [TIM, FLUID], FLUID)
    absolute = plan_synth(midi_dir, s, [TIM, FLUID], FLUID)
    assert [(t.key, t.soundfont) for t in rel] == [(t.key, t.soundfont) for t in absolute]
    assert all(Path(t.midi).is_absolute() and Path(t.midi).is_file() for t in rel)


def test_plan_cycles_training_voices_over_programs(midi_dir):
    from kkoma.offline.prepare import plan_synth

    s = _settings("data.programs=[0, 2]")
    tasks = plan_synth(midi_dir, s, [TIM, FLUID, TIM + "2"], FLUID)
    train = [t for t in tasks if t.split == "train"]
    voices = [(t.soundfont, t.program) for t in train]
    want = [(TIM, 0), (TIM + "2", 0), (TIM, 2), (TIM + "2", 2)]
    assert voices == [want[i % 4] for i in range(len(train))]
    assert all(t.program == 0 for t in tasks if t.split != "train")  # validation plays the first program
    for bad in ("[]", "[1.5]"):
        with pytest.raises(KkomaError, match="data.programs"):
            plan_synth(midi_dir, _settings(f"data.programs={bad}"), [TIM], FLUID)


@needs_sf
def test_renderer_plays_the_chosen_program():
    from kkoma.offline.synth import MidiEvent, Renderer

    notes = [MidiEvent(0.05, "on", 0, 60, 100), MidiEvent(0.5, "off", 0, 60, 0)]
    spectra = []
    for program in (0, 2):
        with Renderer(TIM, 16000, 0.8, program) as r:
            audio = r.render(notes, 0.6)
        assert np.abs(audio).max() > 0.01
        spectra.append(np.abs(np.fft.rfft(audio)))
    a, b = (x / np.linalg.norm(x) for x in spectra)
    assert float(a @ b) < 0.95  # Electric Grand is another instrument, not the same samples (measured 0.83)


def test_a_piece_renders_the_same_whatever_came_before():
    """FluidSynth starts events on its 64-sample block grid; the renderer starts every piece on a block boundary,
    so rendering another piece of an odd length first does not move this piece's notes. (A remainder of about 1 %
    of the RMS is left, in the first ~20 ms of each note: a FluidSynth voice-reuse effect.)"""
    from kkoma.offline.synth import MidiEvent, Renderer

    piece = [MidiEvent(0.1 + 0.07 * i, "on", 0, 48 + 5 * i, 90) for i in range(8)]
    piece += [MidiEvent(0.9 + 0.07 * i, "off", 0, 48 + 5 * i, 0) for i in range(8)]
    piece.sort(key=lambda e: e.time)
    other = [MidiEvent(0.0, "on", 0, 40, 120), MidiEvent(0.3, "off", 0, 40, 0)]
    with Renderer(TIM, 16000, 0.8) as r:
        first = r.render(piece, 1.2)
        r.render(other, 0.3337)  # 5339 samples: not a whole number of blocks
        again = r.render(piece, 1.2)
    def rms(x):
        return float(np.sqrt(np.mean(np.square(x))))

    assert np.abs(first).max() > 0.05
    # measured: 0.010 of the piece's RMS aligned, 1.3 without the alignment (the waveform's phase moves)
    assert rms(again - first) < 0.05 * rms(first)


# ----------------------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------------------
@needs_sf
def test_prepare_synth_end_to_end_resume_and_corrupt_file(midi_dir, tmp_path, capsys):
    from kkoma.offline.prepare import prepare_synth

    (midi_dir / "Bad" / "Work" / "w").mkdir(parents=True)
    bad = midi_dir / "Bad" / "Work" / "w" / "Broken.mid"
    bad.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\x00\x00\x10\x00\x90\x3c")
    out = tmp_path / "ds"
    s = _settings()
    summary = prepare_synth(midi_dir, out, s, max_seconds=3.0, jobs=2, quiet=True)
    err = capsys.readouterr().err
    assert f"skipped {bad}" in err
    assert [p for p, _ in summary.skipped] == [str(bad)]

    m = json.loads((out / "manifest.json").read_text())
    assert m["settings"]["audio"] == dataclasses.asdict(s.audio)
    assert [x["path"] for x in m["skipped"]] == [str(bad)]
    pieces = m["pieces"]
    from kkoma.offline.prepare import voice_name

    voices = {voice_name(p["soundfont"], p["program"]) for p in pieces}
    assert {TIM, FLUID} <= voices and set(m["renderer_offsets_ms"]) == voices  # one offset per voice used
    assert all(0 < v < 15 for v in m["renderer_offsets_ms"].values())
    splits = {p["split"] for p in pieces}
    assert splits == {"train", "valid_pieces", "valid_soundfont", "valid_room"}
    assert summary.done == len(pieces) and summary.already == 0
    assert all(p["soundfont"] != FLUID for p in pieces if p["split"] == "train")
    train_works = {p["work"] for p in pieces if p["split"] == "train"}
    assert train_works.isdisjoint(p["work"] for p in pieces if p["split"] != "train")
    for p in pieces:
        with np.load(out / p["file"]) as z:
            f = z["features"]
            assert f.dtype == np.float16 and f.shape == (p["n_frames"], 264) and np.isfinite(f).all()
            for k in ("onset", "frame", "offset", "velocity"):
                assert z[k].shape == (p["n_frames"], 88) and z[k].dtype == np.uint8
            assert z["onset"].sum() == p["n_notes"] > 0
            assert p["n_frames"] == int(p["seconds"] * 16000) // 160 + 1
            notes = read_midi(p["midi"])
            if p["split"] != "train" or "detune_cents" not in p["augment"]:
                # no time change: onsets sit at the nearest frame of the MIDI times
                want = {(int(round(n.onset * 100)), n.pitch - 21) for n in notes}
                assert set(zip(*np.nonzero(z["onset"]))) == want
                assert {z["velocity"][i, k] for i, k in want} == {n.velocity for n in notes}
        assert p["seconds"] <= 3.0
        if p["split"] == "train":
            assert p["augment"] and not (out / "audio" / "train").exists()
        else:
            base = out / "audio" / p["split"] / p["id"]
            audio, sr = sf.read(base.with_suffix(".flac"))
            assert sr == 16000 and len(audio) == round(p["seconds"] * sr)
            ref = read_midi(base.with_suffix(".mid"))
            assert [(n.pitch, n.velocity) for n in ref] == [(n.pitch, n.velocity) for n in read_midi(p["midi"])]
            assert ("rt60_s" in p["augment"]) == (p["split"] == "valid_room")
    # the pedal held PlayerA's first notes to 1.0 s: frames are sustain-extended
    a = next(p for p in pieces if p["id"].endswith("PlayerA"))
    with np.load(out / a["file"]) as z:
        assert z["frame"][30:100, 60 - 21].all()

    # resume: nothing to do; a lost shard is made again, and only it
    again = prepare_synth(midi_dir, out, s, max_seconds=3.0, jobs=1, quiet=True)
    assert again.done == 0 and again.already == len(pieces) and len(again.skipped) == 1
    victim = out / pieces[0]["file"]
    before = np.load(victim)["features"]
    victim.unlink()
    third = prepare_synth(midi_dir, out, s, max_seconds=3.0, jobs=1, quiet=True)
    assert third.done == 1 and third.already == len(pieces) - 1
    np.testing.assert_array_equal(np.load(victim)["features"], before)  # same piece, same augmentation
    assert len(json.loads((out / "manifest.json").read_text())["pieces"]) == len(pieces)
    with pytest.raises(KkomaError, match="hop_length"):
        prepare_synth(midi_dir, out, _settings("audio.hop_length=320"), max_seconds=3.0, jobs=1, quiet=True)


@needs_sf
def test_interrupt_saves_progress_and_says_how_to_resume(midi_dir, tmp_path, monkeypatch, capsys):
    from kkoma.offline import prepare

    real = prepare.make_piece
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(prepare, "make_piece", flaky)
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_synth(midi_dir, out, _settings(), max_seconds=2.0, jobs=1, quiet=True)
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err and "interrupted after 1 of " in err
    assert len(json.loads((out / "manifest.json").read_text())["pieces"]) == 1
    monkeypatch.setattr(prepare, "make_piece", real)
    summary = prepare.prepare_synth(midi_dir, out, _settings(), max_seconds=2.0, jobs=1, quiet=True)
    assert summary.already == 1 and summary.done > 0


# ----------------------------------------------------------------------------------------------------------------
# MAESTRO layout
# ----------------------------------------------------------------------------------------------------------------
def _sine_render(notes, seconds, sr=44100):
    """Stereo test audio: a decaying sine per note (no soundfont needed)."""
    x = np.zeros(int(seconds * sr))
    for p, on, off, v in notes:
        i0, i1 = int(on * sr), min(len(x), int(off * sr))
        t = np.arange(i1 - i0) / sr
        x[i0:i1] += v / 127 * 0.2 * np.sin(2 * np.pi * 440 * 2 ** ((p - 69) / 12) * t) * np.exp(-3 * t)
    return np.stack([x, 0.5 * x], axis=1)


@pytest.fixture
def maestro_root(tmp_path):
    root = tmp_path / "maestro"
    rows = []
    for i, split in enumerate(["train", "validation", "test"]):
        notes = _scale(0.2 + 0.1 * i, [57 + i, 60 + i, 64 + i, 69 + i])
        stem = f"2018/MIDI-Unprocessed_{i:02d}"
        write_midi_file(root / f"{stem}.midi", notes)
        sf.write(root / f"{stem}.wav", _sine_render(notes, 2.0), 44100)
        rows.append(f'Composer {i},"Title, {i}",{split},2018,{stem}.midi,{stem}.wav,2.0')
    (root / "maestro-v3.0.0.csv").write_text(
        "canonical_composer,canonical_title,split,year,midi_filename,audio_filename,duration\n" + "\n".join(rows) + "\n")
    return root


def test_prepare_maestro_fixture(maestro_root, tmp_path):
    from kkoma.offline.prepare import prepare_maestro

    out = tmp_path / "ds"
    summary = prepare_maestro(maestro_root, out, _settings(), max_seconds=1.5, jobs=1, quiet=True)
    m = json.loads((out / "manifest.json").read_text())
    assert summary.done == 3 and not summary.skipped and m["kind"] == "maestro"
    by_split = {p["split"]: p for p in m["pieces"]}
    assert set(by_split) == {"train", "valid_pieces", "test"}
    for split, p in by_split.items():
        assert p["audio"].endswith(".wav") and p["soundfont"] is None
        assert p["seconds"] == (pytest.approx(1.5, rel=0.01) if split == "train" else 1.5)  # train may be detuned
        assert p["work"].startswith("Composer ")
        with np.load(out / p["file"]) as z:
            assert z["features"].shape == (151, 264)
            notes = [n for n in read_midi(p["midi"]) if n.onset < 1.5]
            if split != "train":  # train may be detuned
                assert set(zip(*np.nonzero(z["onset"]))) == {(int(round(n.onset * 100)), n.pitch - 21)
                                                            for n in notes}
                assert p["augment"] == {}
                assert (out / "audio" / split / f"{p['id']}.flac").is_file()
    assert not (out / "audio" / "train").exists()


def test_maestro_bad_audio_is_skipped_and_bad_csv_is_an_error(maestro_root, tmp_path):
    from kkoma.offline.prepare import prepare_maestro

    (maestro_root / "2018" / "MIDI-Unprocessed_01.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    summary = prepare_maestro(maestro_root, tmp_path / "ds", _settings(), max_seconds=1.0, jobs=1, quiet=True,
                              export_audio=False)
    assert summary.done == 2 and [Path(p).name for p, _ in summary.skipped] == ["MIDI-Unprocessed_01.wav"]
    (maestro_root / "maestro-v3.0.0.csv").write_text("a,b\n1,2\n")
    with pytest.raises(KkomaError, match="columns"):
        prepare_maestro(maestro_root, tmp_path / "ds2", _settings())


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------
@needs_sf
def test_cli(midi_dir, tmp_path, capsys):
    from kkoma.cli import main

    out = tmp_path / "ds"
    sets = ["--set", f'data.soundfonts=["{TIM}"]', "--set", "data.holdout_piece_fraction=0.3"]
    rc = main(sets + ["prepare", "synth", str(midi_dir), str(out), "--holdout-soundfont", FLUID,
                      "--max-pieces", "2", "--max-seconds", "1.5", "--jobs", "1", "--no-audio", "-q"])
    err = capsys.readouterr().err
    assert rc == 0 and "pieces made" in err
    m = json.loads((out / "manifest.json").read_text())
    assert len({p["id"] for p in m["pieces"]}) == 2 and not (out / "audio").exists()
    assert main(["prepare", "synth", str(tmp_path / "nowhere"), str(out)]) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert main(["prepare", "maestro", str(tmp_path), str(out), "--max-seconds", "0"]) == 1


@needs_sf
def test_split_makes_only_those_pieces_and_a_later_run_adds_the_rest(midi_dir, tmp_path, capsys):
    from kkoma.cli import main
    from kkoma.offline.prepare import plan_synth, select_splits

    s = _settings()
    plan = plan_synth(midi_dir, s, [TIM], FLUID)
    valid = {t.key for t in plan if t.split != "train"}
    assert valid and len(valid) < len(plan)
    assert {t.key for t in select_splits(plan, ["valid"])} == valid
    assert {t.split for t in select_splits(plan, ["valid_room", "train"])} == {"valid_room", "train"}
    assert select_splits(plan, None) == plan
    with pytest.raises(KkomaError, match="no such split.*valid_pieces"):
        select_splits(plan, ["valid_samples"])  # no --samples, no valid_samples

    out = tmp_path / "ds"
    sets = ["--set", f'data.soundfonts=["{TIM}"]', "--set", "data.holdout_piece_fraction=0.3"]
    cmd = sets + ["prepare", "synth", str(midi_dir), str(out), "--holdout-soundfont", FLUID, "--max-seconds", "1.5",
                  "--jobs", "1", "-q"]
    assert main(cmd + ["--split", "valid"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert {f"{p['split']}/{p['id']}" for p in m["pieces"]} == valid
    assert (out / "audio" / "valid_room").is_dir() and not (out / "train").exists()
    capsys.readouterr()
    assert main(cmd) == 0  # the rest, and only the rest
    assert f"{len(plan) - len(valid)} pieces made (train {len(plan) - len(valid)}), {len(valid)} already done" \
        in capsys.readouterr().err
    assert main(cmd + ["--split", "test"]) == 1
    assert "--split test: this dataset has no such split" in capsys.readouterr().err


@pytest.mark.parametrize("cap,ok", [("inf", True), ("120", False)])
def test_a_manifest_older_than_a_key_reads_as_its_old_value(tmp_path, cap, ok):
    """A dataset prepared before ``cqt.max_window_ms`` existed has uncapped windows: `prepare` (resume) and `train`
    accept it under inf and refuse it, naming the key, under a cap; another changed key is refused too."""
    from dataclasses import asdict

    from kkoma.offline.prepare import read_existing
    from kkoma.offline.train import read_manifest

    s = load_settings(overrides=[f"cqt.max_window_ms={cap}"])
    cqt = asdict(s.cqt)
    del cqt["max_window_ms"]
    manifest = {"settings": {"audio": asdict(s.audio), "cqt": cqt}, "pieces": [{"id": "a", "split": "train"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    if ok:
        assert read_existing(tmp_path, s)["pieces"] and read_manifest(tmp_path, s)["pieces"]
    else:
        for read in (read_existing, read_manifest):
            with pytest.raises(KkomaError, match=r"cqt\.max_window_ms = inf"):
                read(tmp_path, s)
    with pytest.raises(KkomaError, match=r"audio\.hop_length = 160"):
        read_existing(tmp_path, s.replace(audio__hop_length="320"))


# ----------------------------------------------------------------------------------------------------------------
# MAPS layout: <piano>/<piece>.<audio> + <piece>.mid
# ----------------------------------------------------------------------------------------------------------------
MAPS_PIECES = {  # piece -> (notes, pedal)
    "alb_esp1": (_scale(0.2, [45, 52, 57, 61]), [(0.25, 127), (1.2, 0)]),
    "bach_846": (_scale(0.3, [60, 64, 67]), []),
    "chpn_op25": (_scale(0.25, [72, 76, 79, 84], vel=100), []),
    "liz_et1": (_scale(0.2, [33, 40, 45]), []),
    "mz_331": (_scale(0.35, [62, 66, 69]), []),
}


def _maps_settings(*extra):
    return _settings('data.maps_holdout_pianos=["PnoHeld"]', 'data.maps_ambient_pianos=["PnoAm"]',
                     "data.maps_holdout_piece_fraction=0.4", *extra)


@pytest.fixture
def maps_root(tmp_path):
    """Three pianos (one to hold out, one 'ambient'), each playing four of the five pieces; 44.1 kHz stereo FLAC,
    one Ogg Vorbis (the maps-synth format), and a stray file without MIDI that must be ignored."""
    root = tmp_path / "maps"
    pianos = {"PnoA": ["alb_esp1", "bach_846", "chpn_op25", "liz_et1", "mz_331"],
              "PnoAm": ["alb_esp1", "bach_846", "chpn_op25", "mz_331"],
              "PnoHeld": ["bach_846", "chpn_op25", "liz_et1"]}
    for piano, pieces in pianos.items():
        for piece in pieces:
            notes, pedal = MAPS_PIECES[piece]
            write_midi_file(root / piano / f"{piece}.mid", notes, pedal)
            fmt = "ogg" if (piano, piece) == ("PnoA", "bach_846") else "flac"
            kw = {"format": "OGG", "subtype": "VORBIS"} if fmt == "ogg" else {}
            sf.write(root / piano / f"{piece}.{fmt}", _sine_render(notes, 1.6), 44100, **kw)
    sf.write(root / "PnoA" / "no_midi.flac", np.zeros((4410, 2)), 44100)
    (root / "README.md").write_text("not a piano")
    return root


def test_plan_maps_holds_out_a_piano_and_pieces_on_every_piano(maps_root):
    from kkoma.offline.prepare import plan_maps

    s = _maps_settings()
    tasks = plan_maps(maps_root, s)
    assert len(tasks) == 12  # every recording with a MIDI file, the stray one left out
    by_split: dict[str, list] = {}
    for t in tasks:
        by_split.setdefault(t.split, []).append(t)
    train = by_split["train"]
    held_pieces = {t.work for t in tasks if t.split in ("valid_maps_pieces", "valid_maps_ambient")}
    assert train and held_pieces
    # the held-out piano is never trained on, and is all of valid_maps_piano
    assert {t.piano for t in train} == {"PnoA", "PnoAm"}
    assert {t.piano for t in by_split["valid_maps_piano"]} == {"PnoHeld"} and len(by_split["valid_maps_piano"]) == 3
    # a held-out piece is heard on no piano in training
    assert held_pieces.isdisjoint(t.work for t in train)
    assert all(t.piano == "PnoAm" for t in by_split.get("valid_maps_ambient", []))
    assert all(t.piano == "PnoA" for t in by_split.get("valid_maps_pieces", []))
    assert all(t.augment == ("train" if t.split == "train" else "none") for t in tasks)
    assert all(t.audio and Path(t.audio).is_file() and Path(t.midi).stem == Path(t.audio).stem for t in tasks)
    assert all(t.piece_in_train == (t.work in {x.work for x in train}) for t in tasks)
    assert len({t.key for t in tasks}) == len(tasks) and all(t.id.startswith("maps__") for t in tasks)
    assert [t.key for t in plan_maps(maps_root, s)] == [t.key for t in tasks]  # deterministic
    # the settings choose: no piano held out, no piece held out
    none = plan_maps(maps_root, _maps_settings("data.maps_holdout_pianos=[]", "data.maps_holdout_piece_fraction=0"))
    assert {t.split for t in none} == {"train"}
    assert len(plan_maps(maps_root, s, max_pieces=4)) == 4
    with pytest.raises(KkomaError, match="PnoX.*PnoA, PnoAm, PnoHeld"):
        plan_maps(maps_root, _maps_settings('data.maps_holdout_pianos=["PnoX"]'))
    with pytest.raises(KkomaError, match="every piano"):
        plan_maps(maps_root, _maps_settings('data.maps_holdout_pianos=["PnoA", "PnoAm", "PnoHeld"]'))
    with pytest.raises(KkomaError, match="MAPS layout"):
        plan_maps(maps_root / "PnoA", s)


def test_prepare_maps_labels_and_joins_an_existing_dataset(maps_root, maestro_root, tmp_path):
    """MAPS pieces go into a dataset beside another source's (one `kkoma train` reads both); labels are the MIDI's
    notes, sustain-extended, on the frame grid."""
    from kkoma.offline.prepare import prepare_maestro, prepare_maps
    from kkoma.offline.train import read_manifest

    out = tmp_path / "ds"
    s = _maps_settings()
    prepare_maestro(maestro_root, out, s, max_seconds=1.5, jobs=1, quiet=True)
    summary = prepare_maps(maps_root, out, s, max_seconds=1.5, jobs=1, quiet=True)
    assert summary.done == 12 and not summary.skipped
    m = read_manifest(out, s)
    assert m["kind"] == "maestro" and m["sources"] == {"maestro": str(maestro_root), "maps": str(maps_root)}
    maps = [p for p in m["pieces"] if p["id"].startswith("maps__")]
    assert len(maps) == 12 and len(m["pieces"]) == 15
    assert {p["split"] for p in m["pieces"] if p["split"] == "train" and not p["id"].startswith("maps__")}
    assert {p["split"] for p in maps} >= {"train", "valid_maps_piano"}
    assert not any(p["piano"] == "PnoHeld" for p in maps if p["split"] == "train")
    for p in maps:
        assert p["audio"].endswith((".flac", ".ogg")) and p["soundfont"] is None
        with np.load(out / p["file"]) as z:
            assert z["features"].shape == (p["n_frames"], 264)
            notes = [n for n in read_midi(p["midi"], sustain=True) if n.onset < 1.5]
            assert z["onset"].sum() == len(notes) == p["n_notes"]
            if p["split"] != "train":  # training copies may be detuned (times and length scaled)
                assert p["augment"] == {} and p["n_frames"] == 151
                assert set(zip(*np.nonzero(z["onset"]))) == {(int(round(n.onset * 100)), n.pitch - 21)
                                                            for n in notes}
                assert (out / "audio" / p["split"] / f"{p['id']}.flac").is_file()
            if p["work"] == "alb_esp1" and p["split"] != "train":
                # the pedal (0.25-1.2 s) holds the first note (0.2-0.4 s) to 1.2 s: frame targets are extended
                assert z["frame"][20:120, 45 - 21].all() and not z["frame"][121:, 45 - 21].any()
    # the ambient piano's held-out pieces are their own condition
    assert all(p["piano"] == "PnoAm" for p in maps if p["split"] == "valid_maps_ambient")
    # resume: nothing left to do
    assert prepare_maps(maps_root, out, s, max_seconds=1.5, jobs=1, quiet=True).already == 12


def test_cli_prepare_maps(maps_root, tmp_path, capsys):
    from kkoma.cli import main

    out = tmp_path / "ds"
    sets = ["--set", 'data.maps_holdout_pianos=["PnoHeld"]', "--set", 'data.maps_ambient_pianos=["PnoAm"]']
    assert main(sets + ["prepare", "maps", str(maps_root), str(out), "--max-seconds", "1.0", "--jobs", "1", "-q",
                        "--split", "valid_maps_piano"]) == 0
    assert "3 pieces made (valid_maps_piano 3)" in capsys.readouterr().err
    assert main(["prepare", "maps", str(maps_root), str(out)]) == 1  # AkPnBsdf (config.toml) is not in this folder
    assert "data.maps_holdout_pianos names AkPnBsdf" in capsys.readouterr().err
    assert main(["prepare", "maps", str(tmp_path / "nowhere"), str(out)]) == 1
    assert "is not a folder" in capsys.readouterr().err
