"""The kkoma command: --help, --version, settings errors, which settings each command gets, and the cqt
subcommand, through main()."""
import importlib
import subprocess
import sys

import numpy as np
import pytest

from kkoma import __version__
from kkoma.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("cqt", "tune", "diagnose", "note-set"):
        assert cmd in out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_imports_nothing_heavy():
    """--help must stay instant: no TensorFlow, librosa, Numba or sounddevice at import."""
    code = ("import sys; from kkoma.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('tensorflow', 'librosa', 'numba', 'sounddevice', 'keras', 'scipy')"
            " if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


@pytest.mark.parametrize("module, args, rc, says", [
    ("kkoma.offline.tune", ["{tmp}/nosuch", "live"], 1, "nosuch"),
    ("kkoma.offline.note_set", ["{tmp}/nosuch.sf2", "{tmp}/out"], 1, "does not exist"),
])
def test_python_m_of_a_tool_runs_its_command(tmp_path, module, args, rc, says):
    """`python -m kkoma.offline.tune ...` is `kkoma tune ...` (and so on): the docs' older commands say something
    instead of printing nothing and exiting 0."""
    r = subprocess.run([sys.executable, "-m", module, *[a.format(tmp=tmp_path) for a in args]], capture_output=True,
                       text=True)
    assert r.returncode == rc and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bad_setting_is_one_sentence_and_exit_2(capsys, tmp_path):
    code = main(["--set", "cqt.nbins=3", "cqt", str(tmp_path / "x.wav")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kkoma: ") and "cqt.nbins" in err and len(err.splitlines()) == 1


def test_cqt_command_on_a_tone(tmp_path, capsys):
    sf = pytest.importorskip("soundfile")
    sr = 22050
    t = np.arange(2 * sr) / sr
    path = tmp_path / "a4.wav"
    sf.write(path, np.stack([np.sin(2 * np.pi * 440 * t)] * 2, axis=1) * 0.5, sr)
    out_npy = tmp_path / "a4.npy"
    assert main(["cqt", str(path), "--save", str(out_npy)]) == 0
    out = capsys.readouterr().out
    assert "A4" in out
    feats = np.load(out_npy)
    assert feats.shape == (2 * 16000 // 160 + 1, 264)


def test_cqt_command_missing_file(tmp_path, capsys):
    assert main(["cqt", str(tmp_path / "missing.wav")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, offline", [
    (["transcribe", "x.wav"], True),
    (["evaluate", "--pred", "p", "--ref", "r"], True),
    (["train", "data", "run"], False),
    (["train", "data", "run", "--offline"], True),
    (["prepare", "synth", "midi", "out", "--offline"], True),
    (["prepare", "synth", "midi", "out"], False),
    (["live", "--no-midi"], False),
    (["record", "take.mid"], False),
    (["tune", "data", "w.npz"], True),
    (["diagnose", "data/audio/valid_pieces"], True),
    (["note-set", "piano.sf2", "out"], False),
])
def test_which_commands_get_the_offline_settings(monkeypatch, argv, offline):
    """Files get the offline model and transform (transcribe.overrides); live, record and (without --offline)
    prepare and train get config.toml's own, so the live model is trained and played as it was."""
    from kkoma import cli
    from kkoma.models.settings import load_settings

    seen = []
    module = importlib.import_module(cli.COMMANDS[argv[0]][0])
    for name in ("run", f"run_{argv[0]}"):
        monkeypatch.setattr(module, name, lambda args, settings: seen.append(settings) or 0, raising=False)
    assert cli.main(argv) == 0
    assert seen == [load_settings(offline=offline)]
    assert (seen[0] == load_settings()) is not offline


def test_global_options_after_the_command(monkeypatch, tmp_path, capsys):
    """--set and --config work after the subcommand as before it; both places add up (the later --set wins)."""
    from kkoma import cli
    from kkoma.models.settings import load_settings

    cfg = tmp_path / "my.toml"
    cfg.write_text("[midi]\nchannel = 5\n")
    seen = []
    module = importlib.import_module(cli.COMMANDS["live"][0])
    monkeypatch.setattr(module, "run_live", lambda args, settings: seen.append(settings) or 0)
    assert cli.main(["--set", "midi.velocity_max=100", "live", "--no-midi", "--config", str(cfg),
                     "--set", "midi.velocity_min=10", "--set", "midi.velocity_max=90"]) == 0
    want = load_settings(cfg, ["midi.velocity_max=100", "midi.velocity_min=10", "midi.velocity_max=90"])
    assert seen == [want] and want.midi.channel == 5 and want.midi.velocity_max == 90
    assert cli.main(["--config", str(cfg), "live", "--config", str(cfg)]) == 2
    assert "--config is given twice" in capsys.readouterr().err
    assert cli.main(["live", "--set", "midi.channel=99"]) == 2
    assert "midi.channel must be" in capsys.readouterr().err


def test_tune_runs_its_weights_with_the_settings_they_carry(monkeypatch, tmp_path, capsys):
    """`kkoma tune DATASET WEIGHTS`: WEIGHTS is the model as --model takes it (a file or a shipped name), with the
    settings it carries under the user's --set; a --model naming another model is refused in one sentence."""
    from kkoma.models.inference import export_random_weights
    from kkoma.models.settings import load_settings
    from kkoma.offline import tune

    path = export_random_weights(tmp_path / "small.npz", load_settings(overrides=["model.units=8"]))
    seen = []
    monkeypatch.setattr(tune, "tune", lambda settings, dataset, **kw: seen.append((settings, dataset)))
    assert main(["tune", "data", str(path), "--set", "tracker.onset_threshold=0.7"]) == 0
    s, dataset = seen[-1]
    assert str(dataset) == "data" and s.model.weights_path == path and s.model.units == 8
    assert s == load_settings(overrides=["tracker.onset_threshold=0.7"], offline=True, model=str(path))
    assert main(["tune", "data", "live"]) == 0
    assert seen[-1][0] == load_settings(model="live")  # the shipped live model, with the live settings
    assert main(["--model", str(path), "tune", "data", str(path)]) == 0  # the same file twice: fine
    assert seen[-1][0] == load_settings(offline=True, model=str(path))
    assert main(["tune", "data", str(path), "--model", "live"]) == 2
    assert "drop --model" in capsys.readouterr().err
