"""``kkoma serve``: the access token, the upload API (same notes as ``kkoma transcribe``), the live socket (same notes
as ``kkoma live`` on the same audio), the take (the files model's notes on the recorded audio), the client limit, the
command itself over HTTPS, and the page in headless Chromium with a fake microphone playing the example.

Everything runs the shipped models on ``examples/example.flac`` (12.5 s). The browser test needs Debian's
``chromium`` and ``chromium-driver`` (``.ci/install`` installs them) and skips with the reason when they are absent.
"""
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

try:
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect
except (ImportError, RuntimeError) as e:  # Starlette raises RuntimeError when its HTTP client is missing
    pytest.skip(f"kkoma serve's tests need the web and test extras ({e})", allow_module_level=True)

from kkoma.cli import main
from kkoma.models.notes import read_midi
from kkoma.models.resample import resample
from kkoma.models.settings import load_settings
from kkoma.realtime.webapp import make_app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "example.flac"
TOKEN = "test-token-0123456789"
S = load_settings()
S_OFF = load_settings(offline=True)


@pytest.fixture(scope="module")
def client():
    app = make_app(S, S_OFF, TOKEN)
    with TestClient(app) as c:
        yield c
    app.state.server.close()


def _transcribe_cli(audio: Path, out_dir: Path, *options: str) -> list:
    """The notes ``kkoma [options] transcribe`` writes for ``audio`` (read back from its MIDI file)."""
    assert main([*options, "transcribe", str(audio), "-o", str(out_dir), "-q", "--overwrite"]) == 0
    return read_midi(out_dir / (audio.stem + ".mid"))


def _one_sentence(text: str) -> bool:
    text = text.strip()
    return bool(text) and "\n" not in text and text.endswith(".") and ". " not in text[:-1]


# ---------------------------------------------------------------------------------------------------------------
# Access token
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/worklet.js", "/api/take/0.mid"])
@pytest.mark.parametrize("query", ["", "?token=wrong", f"?token={TOKEN[:-1]}"])
def test_requests_without_the_token_are_refused(client, path, query):
    r = client.get(path + query)
    assert r.status_code == 401
    assert _one_sentence(r.text)


def test_upload_and_socket_without_the_token_are_refused(client):
    r = client.post("/api/transcribe", files={"file": ("example.flac", EXAMPLE.read_bytes())})
    assert r.status_code == 401
    with pytest.raises(WebSocketDisconnect) as e:
        with client.websocket_connect("/ws/live?token=nope"):
            pass
    assert e.value.code == 1008


def test_the_token_opens_the_page_and_its_assets(client):
    r = client.get(f"/?token={TOKEN}")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "__TOKEN__" not in r.text and f"app.js?token={TOKEN}" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # nothing from elsewhere (no CDN)
    for name in ("app.js", "worklet.js", "style.css"):
        assert client.get(f"/static/{name}", headers={"X-Kkoma-Token": TOKEN}).status_code == 200
    assert client.get(f"/static/serve.py?token={TOKEN}").status_code == 404


# ---------------------------------------------------------------------------------------------------------------
# Upload
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_upload_gives_the_notes_of_kkoma_transcribe(client, tmp_path):
    r = client.post(f"/api/transcribe?token={TOKEN}", files={"file": ("example.flac", EXAMPLE.read_bytes())})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/midi"
    (tmp_path / "served.mid").write_bytes(r.content)
    served = read_midi(tmp_path / "served.mid")
    expected = _transcribe_cli(EXAMPLE, tmp_path / "cli")
    assert len(expected) > 20
    assert served == expected

    # The page's form of the same answer: progress lines, then the notes, the MIDI file and the CSV.
    r = client.post(f"/api/transcribe?token={TOKEN}&format=ndjson",
                    files={"file": ("example.flac", EXAMPLE.read_bytes())})
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert all("progress" in x for x in lines[:-1]) and lines[-2]["progress"] == pytest.approx(1.0, abs=0.01)
    final = lines[-1]
    import base64

    (tmp_path / "page.mid").write_bytes(base64.b64decode(final["midi"]))
    assert read_midi(tmp_path / "page.mid") == expected
    assert len(final["notes"]) == len(expected) and final["csv"].startswith("onset,offset,pitch,velocity")


def test_a_text_file_gets_a_4xx_with_one_sentence(client):
    r = client.post(f"/api/transcribe?token={TOKEN}", files={"file": ("notes.txt", b"not audio at all\n" * 50)})
    assert 400 <= r.status_code < 500
    assert _one_sentence(r.text) and "notes.txt" in r.text


def test_an_upload_without_the_file_field_gets_a_4xx(client):
    r = client.post(f"/api/transcribe?token={TOKEN}", files={"audio": ("x.flac", EXAMPLE.read_bytes())})
    assert r.status_code == 400 and _one_sentence(r.text)


def test_an_upload_over_the_limit_is_refused():
    app = make_app(S.replace(serve__max_upload_mb="0.1"), S_OFF, TOKEN)
    try:
        with TestClient(app) as c:
            assert EXAMPLE.stat().st_size > 200_000
            r = c.post(f"/api/transcribe?token={TOKEN}", files={"file": ("example.flac", EXAMPLE.read_bytes())})
            assert r.status_code == 413 and _one_sentence(r.text) and "serve.max_upload_mb" in r.text
    finally:
        app.state.server.close()


# ---------------------------------------------------------------------------------------------------------------
# Live socket and take
# ---------------------------------------------------------------------------------------------------------------
def _stream(ws, x: np.ndarray, rate: int, record: bool, block: int = 1000) -> tuple[list, dict | None]:
    """Send ``x`` over a live socket as a page does; returns the note messages and the take message."""
    ws.send_json({"type": "start", "rate": rate})
    assert ws.receive_json()["type"] == "ready"
    if record:
        ws.send_json({"type": "record", "on": True})
    for i in range(0, len(x), block):
        ws.send_bytes(x[i:i + block].astype("<f4").tobytes())
    ws.send_json({"type": "end"})
    notes, take = [], None
    while True:
        m = ws.receive_json()
        if m["type"] == "note":
            notes.append(m)
        elif m["type"] == "take":
            take = m
        elif m["type"] == "error":
            raise AssertionError(m["message"])
        elif m["type"] == "ended":
            return notes, take


@pytest.mark.slow
def test_live_socket_gives_the_notes_of_kkoma_live_and_the_take_those_of_kkoma_transcribe(client, tmp_path):
    x, sr = sf.read(EXAMPLE, dtype="float32")
    rate = 44100  # a browser's rate: the socket's samples go through the project's resampler, as a sound card's
    y = resample(x, sr, rate, S)
    wav = tmp_path / "example44k.wav"
    sf.write(wav, y, rate, subtype="FLOAT")

    with client.websocket_connect(f"/ws/live?token={TOKEN}") as ws:
        notes, take = _stream(ws, y, rate, record=True, block=997)

    jsonl = tmp_path / "live.jsonl"
    assert main(["live", "--input", str(wav), "--speed", "max", "--no-midi", "-q",
                 "--events-jsonl", str(jsonl)]) == 0
    live = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(live) > 40
    assert [(m["kind"], m["pitch"], m["velocity"]) for m in notes] == \
        [("on" if e["type"] == "note_on" else "off", e["pitch"], e["velocity"]) for e in live]
    np.testing.assert_allclose([m["t"] for m in notes], [e["t_note"] for e in live], atol=1e-4)

    # The take: the files model's notes on the recorded audio, as `kkoma transcribe` gives them on that audio.
    assert take is not None
    r = client.get(f"/api/take/{take['id']}.mid?token={TOKEN}")
    assert r.status_code == 200
    (tmp_path / "take.mid").write_bytes(r.content)
    expected = _transcribe_cli(wav, tmp_path / "cli")
    assert read_midi(tmp_path / "take.mid") == expected and len(expected) > 20
    r = client.get(f"/api/take/{take['id']}.wav?token={TOKEN}")
    (tmp_path / "take.wav").write_bytes(r.content)
    np.testing.assert_array_equal(sf.read(tmp_path / "take.wav", dtype="float32")[0], y)


@pytest.mark.slow
def test_the_client_limit_turns_away_one_more_browser():
    app = make_app(S.replace(serve__max_clients="1"), S_OFF, TOKEN)
    try:
        with TestClient(app) as c:
            with c.websocket_connect(f"/ws/live?token={TOKEN}") as first:
                first.send_json({"type": "start", "rate": 16000})
                assert first.receive_json()["type"] == "ready"
                with c.websocket_connect(f"/ws/live?token={TOKEN}") as second:
                    m = second.receive_json()
                    assert m["type"] == "error" and "serve.max_clients" in m["message"]
                first.send_json({"type": "end"})
                while first.receive_json()["type"] != "ended":
                    pass
            # The first one gone, a new browser gets an engine.
            with c.websocket_connect(f"/ws/live?token={TOKEN}") as third:
                third.send_json({"type": "start", "rate": 16000})
                assert third.receive_json()["type"] == "ready"
                third.send_json({"type": "end"})
                while third.receive_json()["type"] != "ended":
                    pass
    finally:
        app.state.server.close()


@pytest.mark.slow
def test_old_takes_are_deleted_beyond_keep_takes():
    app = make_app(S.replace(serve__keep_takes="1"), S_OFF, TOKEN)
    x, sr = sf.read(EXAMPLE, dtype="float32", frames=2 * 16000)
    ids = []
    try:
        with TestClient(app) as c:
            with c.websocket_connect(f"/ws/live?token={TOKEN}") as ws:
                ws.send_json({"type": "start", "rate": sr})
                assert ws.receive_json()["type"] == "ready"
                for _ in range(2):
                    ws.send_json({"type": "record", "on": True})
                    ws.send_bytes(x.tobytes())
                    ws.send_json({"type": "record", "on": False})
                    while (m := ws.receive_json())["type"] != "take":
                        assert m["type"] != "error", m
                    ids.append(m["id"])
                ws.send_json({"type": "end"})
                while ws.receive_json()["type"] != "ended":
                    pass
            assert c.get(f"/api/take/{ids[1]}.mid?token={TOKEN}").status_code == 200
            assert c.get(f"/api/take/{ids[0]}.mid?token={TOKEN}").status_code == 404
    finally:
        app.state.server.close()


def test_a_broken_audio_message_ends_the_stream_with_one_sentence(client):
    with client.websocket_connect(f"/ws/live?token={TOKEN}") as ws:
        ws.send_json({"type": "start", "rate": 48000})
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(b"abc")  # not whole float32 samples
        while (m := ws.receive_json())["type"] != "error":
            pass
        assert _one_sentence(m["message"]) and "float32" in m["message"]
    deadline = time.monotonic() + 10
    while client.app.state.server.live_clients and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.app.state.server.live_clients == 0


def test_a_stream_must_start_with_its_rate(client):
    with client.websocket_connect(f"/ws/live?token={TOKEN}") as ws:
        ws.send_json({"type": "start"})
        m = ws.receive_json()
        assert m["type"] == "error" and _one_sentence(m["message"])


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------
class _Served:
    """``kkoma serve`` in a subprocess; ``url`` is the URL it printed."""

    def __init__(self, *args):
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "kkoma.cli", "serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("kkoma serve ended: " + self.proc.stderr.read())
            self.lines.append(line)
            if m := re.search(r"open (\S+)", line):
                self.url = m.group(1)
                break
        # The fingerprint line (with --https) follows the URL lines; stderr carries the rest.
        if "--https" in args:
            self.lines.append(self.proc.stdout.readline())

    def close(self) -> int:
        """SIGTERM (as a service manager stops it); returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _get(url: str, context=None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30, context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.slow
def test_kkoma_serve_https_prints_one_url_with_the_token():
    pytest.importorskip("cryptography")
    served = _Served("--https")
    try:
        assert served.url.startswith("https://127.0.0.1:") and "?token=" in served.url
        assert re.search(r"SHA-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}", "".join(served.lines))
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed: the user compares the printed fingerprint
        status, body = _get(served.url, ctx)
        assert status == 200 and b"kkoma" in body
        status, body = _get(served.url.split("?")[0], ctx)
        assert status == 401

        # The live socket over TLS (wss://), as a phone's page opens it.
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        base = served.url.replace("https://", "wss://").split("/?")[0]
        with connect(f"{base}/ws/live?token={served.url.split('token=')[1]}", ssl=ctx) as ws:
            ws.send(json.dumps({"type": "start", "rate": 48000}))
            assert json.loads(ws.recv(timeout=60))["type"] == "ready"
            ws.send(np.zeros(4800, "<f4").tobytes())
            ws.send(json.dumps({"type": "end"}))
            while json.loads(ws.recv(timeout=60))["type"] != "ended":
                pass
        with pytest.raises(InvalidStatus) as e:
            connect(f"{base}/ws/live", ssl=ctx)
        assert e.value.response.status_code == 403
        assert served.close() == 0  # SIGTERM stops it cleanly
    finally:
        served.close()


def test_serve_help_and_a_bad_port(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--https" in out and "--host" in out
    assert main(["serve", "--port", "70000"]) == 1
    err = capsys.readouterr().err
    assert "--port" in err and _one_sentence(err.split(": ", 1)[1])
    # a files-only model (a backward LSTM) cannot serve the page's live stream: said before serving, exit 1
    assert main(["serve", "--model", "pitch", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "backward LSTM" in err and "--model live" in err and _one_sentence(err.split(": ", 1)[1])


# ---------------------------------------------------------------------------------------------------------------
# The page in a real browser
# ---------------------------------------------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser(tmp_path: Path, wav: Path):
    selenium = pytest.importorskip("selenium", reason="the selenium package is not installed (test extra)")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/install installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    del selenium
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1420",
              "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              f"--use-file-for-fake-audio-capture={wav}%noloop", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(a)
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))


def _wait(driver, script: str, seconds: float):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        err = driver.execute_script("return kkoma.live.error")
        assert not err, err
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for: {script}; page says "
                         + driver.execute_script("return document.getElementById('status').textContent"))


@pytest.mark.slow
@pytest.mark.browser
def test_page_in_chromium_draws_live_notes_and_offers_the_take(tmp_path):
    """The fake microphone plays the example (48 kHz WAV; Chromium captures it at its own rate): the live notes
    arrive and are drawn, and they are the notes `kkoma live` gives on the audio the page captured (the take, armed
    before the start, holds the whole stream); the take's MIDI is `kkoma transcribe`'s on that audio, and matches the
    files model on the example itself within mir_eval's tolerances. Saves a screenshot of the page: docs/serve.png (the
    README's picture) with KKOMA_SCREENSHOT=1, else in the test's temporary folder (a test run leaves the checkout
    as it was)."""
    x, sr = sf.read(EXAMPLE, dtype="float32")
    mic = tmp_path / "mic.wav"
    sf.write(mic, np.concatenate([resample(x, sr, 48000, S), np.zeros(48000 * 3 // 2, np.float32)]), 48000,
             subtype="PCM_16")
    driver = _browser(tmp_path, mic)
    served = _Served()
    try:
        driver.get(served.url)
        driver.find_element("id", "record").click()  # armed: the take holds the whole stream
        driver.find_element("id", "start").click()
        rate = _wait(driver, "return kkoma.live.rate", 60)
        _wait(driver, f"return kkoma.live.captured / kkoma.live.rate > {len(x) / sr + 1.2}", 90)
        live = driver.execute_script("return kkoma.live")
        drawn = driver.execute_script("return kkoma.drawn")
        coloured = driver.execute_script("""
            const c = document.getElementById('live-roll'), d = c.getContext('2d').getImageData(0, 0, c.width,
            c.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4) if (Math.max(d[i], d[i+1], d[i+2]) - Math.min(d[i], d[i+1], d[i+2])
                > 80) n++;
            return n;""")
        lat = sorted(live["latencies"])
        print(f"\nbrowser capture {rate} Hz; {len(live['notes'])} live notes; measured latency (page clock - note "
              f"time) median {1000 * lat[len(lat) // 2]:.0f} ms, max {1000 * lat[-1]:.0f} ms; "
              f"{coloured} note pixels on the roll")
        assert len(live["notes"]) > 20 and drawn > 5 and coloured > 500
        driver.find_element("id", "stop").click()
        take = _wait(driver, "return kkoma.take", 120)
        _wait(driver, "return kkoma.live.ended", 30)
        live = driver.execute_script("return kkoma.live")

        # Upload the example through the page's file input too, for the picture.
        inp = driver.find_element("id", "file")
        driver.execute_script("arguments[0].style.display = 'block'", inp)
        inp.send_keys(str(EXAMPLE))
        driver.execute_script("arguments[0].style.display = ''", inp)
        result = _wait(driver, "return kkoma.file", 120)
        assert len(result["notes"]) > 20
        shot = ROOT / "docs" / "serve.png" if os.environ.get("KKOMA_SCREENSHOT") == "1" else tmp_path / "serve.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000

        base = served.url.split("?")[0].rstrip("/")
        token = served.url.split("token=")[1]
        status, wav_bytes = _get(f"{base}/api/take/{take['id']}.wav?token={token}")
        assert status == 200
        (tmp_path / "take.wav").write_bytes(wav_bytes)
        status, mid = _get(f"{base}/api/take/{take['id']}.mid?token={token}")
        (tmp_path / "take.mid").write_bytes(mid)
    finally:
        driver.quit()
        served.close()

    captured, take_rate = sf.read(tmp_path / "take.wav", dtype="float32")
    assert take_rate == rate and len(captured) == live["captured"]

    # Live: the page's notes are those of `kkoma live` on the captured audio.
    jsonl = tmp_path / "live.jsonl"
    assert main(["live", "--input", str(tmp_path / "take.wav"), "--speed", "max", "--no-midi", "-q",
                 "--events-jsonl", str(jsonl)]) == 0
    ons = [json.loads(line) for line in jsonl.read_text().splitlines()]
    ons = [(e["pitch"], e["velocity"], round(e["t_note"], 4)) for e in ons if e["type"] == "note_on"]
    page = [(n["pitch"], n["vel"], round(n["on"], 4)) for n in live["notes"]]
    assert page == ons

    # Take: `kkoma transcribe` on the captured audio, and close to the files model on the example itself.
    take_notes = read_midi(tmp_path / "take.mid")
    assert take_notes == _transcribe_cli(tmp_path / "take.wav", tmp_path / "cli")
    from kkoma.offline.evaluate import score_notes

    pytest.importorskip("mir_eval")
    ref = _transcribe_cli(EXAMPLE, tmp_path / "ref")
    lag = _lag(resample(captured, take_rate, sr, S), x, sr)
    span = len(captured) / take_rate
    from kkoma.models.notes import Note

    ref = [Note(n.pitch, n.onset + lag, n.offset + lag, n.velocity) for n in ref if 0 <= n.onset + lag < span - 0.5]
    score = score_notes(ref, take_notes, S.audio.frame_rate)
    print(f"take vs files model on the example (shifted {1000 * lag:.0f} ms): onset F1 {score['onset_f1']:.3f}, "
          f"{score['n_est']} / {score['n_ref']} notes")
    assert score["onset_f1"] >= 0.9


def _lag(captured: np.ndarray, original: np.ndarray, sr: int) -> float:
    """Where the original starts in the captured audio [s] (the peak of their cross-correlation)."""
    from scipy.signal import correlate

    c = correlate(captured, original, mode="full", method="fft")
    return (int(np.argmax(c)) - (len(original) - 1)) / sr


def test_serve_files_model_chooses_the_pages_files_model(monkeypatch, tmp_path):
    """`kkoma serve --files-model pitch`: the page's files (uploads, takes) get that model and its tracker, as
    `kkoma transcribe --model pitch` does (the same notes for an upload); the live stream keeps the live model."""
    import uvicorn

    import kkoma.realtime.webapp as W

    seen = {}
    real = W.make_app

    def make_app(settings, offline_settings, token):
        seen.update(live=settings, files=offline_settings)
        return real(settings, offline_settings, token)

    class Server:  # no uvicorn: its Config sets up logging on pytest's captured streams
        def __init__(self, config):
            pass

        def run(self, sockets=()):
            pass

    monkeypatch.setattr(W, "make_app", make_app)
    monkeypatch.setattr(uvicorn, "Config", lambda app, **kw: None)
    monkeypatch.setattr(uvicorn, "Server", Server)
    assert main(["serve", "--port", "0", "--files-model", "pitch"]) == 0
    assert seen["files"] == load_settings(model="pitch") and seen["live"] == S
    assert seen["files"].model.weights_path.name == "kkoma_pitch.npz"
    app = make_app(S, seen["files"], TOKEN)
    with TestClient(app) as c:
        r = c.post(f"/api/transcribe?token={TOKEN}", files={"file": ("example.flac", EXAMPLE.read_bytes())})
    app.state.server.close()
    assert r.status_code == 200
    (tmp_path / "served.mid").write_bytes(r.content)
    expected = _transcribe_cli(EXAMPLE, tmp_path / "cli", "--model", "pitch")
    assert len(expected) > 20 and read_midi(tmp_path / "served.mid") == expected
    assert main(["serve", "--port", "0"]) == 0 and seen["files"] == S_OFF
    # --set's keys that name networks tune the live model (--model's); the files model stays its own.
    assert main(["--model", "live-ensemble", "--set", "model.ensemble_weights=[0.9, 0.1]", "serve", "--port",
                 "0"]) == 0
    assert seen["live"].model.ensemble_weights == (0.9, 0.1) and seen["files"] == S_OFF
