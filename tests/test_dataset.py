"""offline/dataset.py, the one reader of a prepared dataset: the manifest (missing, unreadable, other settings, no
pieces), a split's entries, the evaluation audio's splits."""
import json
from dataclasses import asdict

import pytest

from kkoma.models.errors import KkomaError
from kkoma.models.settings import load_settings
from kkoma.offline.dataset import audio_splits, read_manifest, split_pieces

S = load_settings()


def write(folder, pieces, settings=S):
    record = {"audio": asdict(settings.audio), "cqt": asdict(settings.cqt)}
    (folder / "manifest.json").write_text(json.dumps({"settings": record, "pieces": pieces}))


def test_missing_unreadable_and_empty(tmp_path):
    assert read_manifest(tmp_path, S, missing_ok=True) is None
    with pytest.raises(KkomaError, match="is not a kkoma dataset"):
        read_manifest(tmp_path, S)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(KkomaError, match="cannot be read"):
        read_manifest(tmp_path, S, missing_ok=True)
    write(tmp_path, [])
    assert read_manifest(tmp_path, S)["pieces"] == []
    with pytest.raises(KkomaError, match="has no pieces"):
        read_manifest(tmp_path, S, require_pieces=True)


def test_other_settings_name_the_key_and_how_to_match_them(tmp_path):
    write(tmp_path, [{"id": "a", "split": "train"}], load_settings(overrides=["cqt.lookahead_ms=250"]))
    with pytest.raises(KkomaError, match=r"cqt\.lookahead_ms = 250\.0, not 0\.0: .*--set cqt\.lookahead_ms=250\.0"):
        read_manifest(tmp_path, S)
    assert read_manifest(tmp_path, load_settings(overrides=["cqt.lookahead_ms=250"]))["pieces"]


def test_split_pieces_and_audio_splits(tmp_path):
    pieces = [{"id": i, "split": s} for i, s in enumerate(["train", "valid_room", "train", "valid_pieces"])]
    assert [p["id"] for p in split_pieces({"pieces": pieces}, "train")] == [0, 2]
    with pytest.raises(KkomaError, match="no audio/ folder"):
        audio_splits(tmp_path)
    for split in ("valid_room", "train", "valid_pieces"):
        (tmp_path / "audio" / split).mkdir(parents=True)
    assert audio_splits(tmp_path) == ["valid_pieces", "valid_room"]
