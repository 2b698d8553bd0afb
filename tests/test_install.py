"""The package installs anywhere: the wheel built from this checkout, installed alone into a fresh virtual
environment, transcribes the bundled example from another folder, with the same notes as this checkout; it holds
one top-level package, ``kkoma`` (the repository's ``models/``, ``offline/``, ``realtime/`` inside it, and
``config.toml`` as its defaults), so ``import models`` fails there and ``import kkoma.models`` works.

Slow (a minute or two: pip installs kkoma's dependencies into the new environment, from pip's cache where it can).
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kkoma.models.notes import read_midi

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "example.flac"

pytestmark = pytest.mark.slow


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{cmd[:4]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
          str(ROOT)], cwd=out, env={**os.environ, "PIP_NO_INPUT": "1"})
    wheels = list(out.glob("kkoma-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_one_package_with_its_config_and_weights(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"kkoma"}, top
    for needed in ("kkoma/config.toml", "kkoma/models/settings.py", "kkoma/offline/transcribe.py",
                   "kkoma/realtime/engine.py", "kkoma/models/weights/kkoma.npz",
                   "kkoma/models/weights/kkoma_offline.npz"):
        assert needed in names, needed
    with zipfile.ZipFile(wheel) as z:
        assert z.read("kkoma/config.toml") == (ROOT / "config.toml").read_bytes()


def test_installed_wheel_transcribes_from_another_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", str(wheel)], env={**os.environ, "PIP_NO_INPUT": "1"})
    work = tmp_path / "elsewhere"
    work.mkdir()
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(py), "-c", "import models"], cwd=work, capture_output=True, text=True, env=clean_env)
    assert r.returncode != 0 and "No module named 'models'" in r.stderr, r.stderr
    r = _run([str(py), "-c", "import kkoma.models.settings as s; print(s.DEFAULT_CONFIG)"], cwd=work, env=clean_env)
    assert Path(r.stdout.strip()).is_relative_to(venv), r.stdout
    _run([str(venv / "bin" / "kkoma"), "transcribe", str(EXAMPLE), "-o", "out", "-q"], cwd=work, env=clean_env)
    installed = read_midi(work / "out" / "example.mid")
    _run([sys.executable, "-m", "kkoma.cli", "transcribe", str(EXAMPLE), "-o", str(tmp_path / "here"), "-q"],
         cwd=ROOT)
    here = read_midi(tmp_path / "here" / "example.mid")
    assert len(installed) > 20
    assert [(n.pitch, round(n.onset, 3), round(n.offset, 3), n.velocity) for n in installed] == \
           [(n.pitch, round(n.onset, 3), round(n.offset, 3), n.velocity) for n in here]
