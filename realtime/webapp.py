"""The web page's server side (``kkoma serve``): one Starlette app holding the page, a live socket and the file upload.

Routes (every one needs the access token, as ``?token=`` or an ``X-Kkoma-Token`` header; see :class:`TokenGate`):

* ``GET /`` the page; ``GET /static/<file>`` its assets (``realtime/web/``, all served from here: no CDN).
* ``WS /ws/live`` the live stream. The page sends ``{"type": "start", "rate": Hz}``, then binary messages of mono
  float32 samples at that rate, ``{"type": "record", "on": bool}`` and finally ``{"type": "end"}``. The samples go
  through a :class:`realtime.engine.Engine` (the one ``kkoma live`` runs: the project's resampler to the model rate,
  the streaming transcriber, the velocity curve), so the notes are those ``kkoma live --input`` gives on the same
  audio. The server answers ``ready`` (latency budget), ``note`` (one per note-on/off: pitch, velocity, ``t`` [s] on
  the stream's sample clock), ``status`` (a few times a second), ``take`` (a recording's notes by the files model,
  with download links) and ``ended`` / ``error``.
* ``POST /api/transcribe`` (multipart field ``file``): the files model's notes on an uploaded audio file, as
  ``kkoma transcribe`` makes them; ``?format=mid`` (default), ``csv``, ``json``, or ``ndjson`` (progress lines then
  the result, what the page uses).
* ``GET /api/take/<id>.<mid|csv|wav>`` a recorded take.

This module imports Starlette and NumPy at module level: ``kkoma serve`` loads it only once it has checked that the
``web`` extra is installed (and ``kkoma --help`` never loads it).
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from kkoma.models.errors import KkomaError
from kkoma.realtime.ringbuffer import RingBuffer

if TYPE_CHECKING:  # pragma: no cover
    from kkoma.models.settings import Settings

WEB_DIR = Path(__file__).resolve().parent / "web"
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml",
                 ".png": "image/png", ".ico": "image/x-icon"}
#: Samples per binary message the socket accepts at most (a page sends ~20 ms blocks; this is 10 s at 48 kHz).
_MAX_BLOCK = 480_000


# ---------------------------------------------------------------------------------------------------------------
# Access token
# ---------------------------------------------------------------------------------------------------------------
class TokenGate:
    """ASGI middleware: a request or socket without the token is refused (HTTP 401; a socket is closed before its
    handshake completes, which the client sees as HTTP 403), on localhost too: other users of this machine and web
    pages open in a browser here can reach a local port."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token.encode()

    def _allowed(self, scope) -> bool:
        from urllib.parse import parse_qs

        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0].encode()
        for k, v in scope.get("headers", ()):
            if k == b"x-kkoma-token":
                given = v
        return hmac.compare_digest(given, self.token)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "access token required"})
            return
        body = b"kkoma serve: this address needs the access token printed by `kkoma serve` (the URL's ?token=...).\n"
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def new_token() -> str:
    """A random access token (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


# ---------------------------------------------------------------------------------------------------------------
# A live source fed by the socket
# ---------------------------------------------------------------------------------------------------------------
class SocketInput:
    """An :mod:`realtime.audio_in` source whose samples arrive over the page's socket (mono float32 at the
    browser's rate): the handler :meth:`push`\\es them into the ring the engine reads, like a sound card's callback.

    When the ring is full, :meth:`push` waits for room instead of dropping (the socket then stops being read and
    TCP holds the sender back), so a slow server shows as latency on the page, never as missing notes.
    ``is_file`` is True because a network stream may pause (a phone's screen locks) without being a fault: the
    engine's stall check is for sound cards. The stream ends with :meth:`end` (the page's "end", or its socket
    closing).
    """

    is_file = True
    channels = 1

    def __init__(self, settings: "Settings", sample_rate: int, name: str = "browser microphone"):
        self.sample_rate = int(sample_rate)
        self.block_size = int(settings.live.block_size)
        self.name = name
        self.ring = RingBuffer(max(int(settings.live.ring_seconds * self.sample_rate), 4 * self.block_size), 1)
        self.poll = settings.live.poll_ms / 1000.0
        self.overflows = 0
        self.error: KkomaError | None = None
        self.finished = False
        self.received = 0  # samples pushed [samples at sample_rate]

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.finished = True

    def end(self) -> None:
        self.finished = True

    async def push(self, x: np.ndarray) -> None:
        """Write ``(n,)`` float32 samples, waiting (on the event loop) while the ring has no room."""
        i = 0
        while i < len(x):
            if self.finished:  # the engine is gone (an error): nothing reads the ring any more
                return
            room = self.ring.capacity - self.ring.available
            if room <= 0:
                await asyncio.sleep(self.poll)
                continue
            j = min(len(x), i + room)
            self.ring.write(x[i:j])
            i = j
        self.received += len(x)


# ---------------------------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Take:
    """A recording made on the page: its audio (mono WAV at the browser's rate) and the files model's notes."""
    wav: Path
    midi: bytes = b""
    csv: str = ""
    notes: list = field(default_factory=list)


class Server:
    """State shared by every request: settings, the files model (built once, used by one request at a time), the
    live sessions counter and the recorded takes (in a temporary folder removed by :meth:`close`)."""

    def __init__(self, settings: "Settings", offline_settings: "Settings", token: str):
        self.settings = settings
        self.offline_settings = offline_settings
        self.token = token
        self.live_clients = 0
        self.takes: dict[str, Take] = {}
        self.background: set = set()  # tasks nobody awaits (asyncio keeps only weak references to tasks)
        self._tmp = tempfile.TemporaryDirectory(prefix="kkoma-serve-")
        self.tmp = Path(self._tmp.name)
        self._files_lock = threading.Lock()
        self._files_transcriber = None

    def close(self) -> None:
        self._tmp.cleanup()

    def forget_old_takes(self) -> None:
        """Make room for one more take: delete the oldest finished ones beyond ``serve.keep_takes``."""
        done = [k for k, t in self.takes.items() if t.midi]
        for k in done[:max(0, len(self.takes) + 1 - self.settings.serve.keep_takes)]:
            self.takes.pop(k).wav.unlink(missing_ok=True)

    # ---- the files model ----------------------------------------------------------------------------------------
    def transcribe_file(self, path: Path, progress=None):
        """The files model's :class:`offline.transcribe.Transcription` of ``path`` (``kkoma transcribe``'s notes).
        One file at a time: the model is built once and holds state while it runs."""
        from kkoma.models.pipeline import make_transcriber
        from kkoma.offline.transcribe import transcribe_file

        with self._files_lock:
            s = self.offline_settings
            if self._files_transcriber is None:
                device = s.transcribe.device
                if device != "cpu":
                    from kkoma.models.tf_inference import resolve_device

                    s = self.offline_settings = s.replace(transcribe__device=resolve_device(device))
                self._files_transcriber = make_transcriber(s)
            return transcribe_file(path, s, self._files_transcriber, progress=progress)

    def midi_bytes(self, notes) -> bytes:
        import io

        from kkoma.models.notes import notes_to_midifile

        buf = io.BytesIO()
        notes_to_midifile(list(notes), self.offline_settings).save(file=buf)
        return buf.getvalue()


def _notes_list(notes) -> list[list]:
    """Notes -> ``[[pitch, onset s, offset s, velocity], ...]`` for the page."""
    return [[int(n.pitch), round(float(n.onset), 4), round(float(n.offset), 4), int(n.velocity)] for n in notes]


def _error(status: int, message: str) -> PlainTextResponse:
    return PlainTextResponse(message + "\n", status_code=status)


def make_app(settings: "Settings", offline_settings: "Settings", token: str):
    """The ASGI app of ``kkoma serve`` (wrapped in :class:`TokenGate`). ``app.state.server`` is the
    :class:`Server`; call its ``close()`` when done."""
    server = Server(settings, offline_settings, token)

    async def page(request: Request):
        html = (WEB_DIR / "index.html").read_text(encoding="utf-8").replace("__TOKEN__", token)
        return Response(html, media_type="text/html", headers={"Cache-Control": "no-store"})

    async def static(request: Request):
        name = request.path_params["name"]
        path = (WEB_DIR / name).resolve()
        if path.parent != WEB_DIR or not path.is_file() or path.suffix not in _STATIC_TYPES:
            return _error(404, f"there is no file {name} here.")
        return FileResponse(path, media_type=_STATIC_TYPES[path.suffix])

    async def take_file(request: Request):
        take = server.takes.get(request.path_params["id"])
        kind = request.path_params["kind"]
        if take is None or not take.midi:
            return _error(404, "there is no such take (takes last as long as the server runs).")
        stem = f"kkoma-take-{request.path_params['id']}"
        if kind == "mid":
            return Response(take.midi, media_type="audio/midi",
                            headers={"Content-Disposition": f'attachment; filename="{stem}.mid"'})
        if kind == "csv":
            return Response(take.csv, media_type="text/csv",
                            headers={"Content-Disposition": f'attachment; filename="{stem}.csv"'})
        if kind == "wav":
            return FileResponse(take.wav, media_type="audio/wav", filename=f"{stem}.wav")
        return _error(404, f"a take is offered as .mid, .csv or .wav, not .{kind}.")

    async def api_transcribe(request: Request):
        return await _transcribe_upload(server, request)

    async def live(ws: WebSocket):
        await _live_session(server, ws)

    app = Starlette(routes=[
        Route("/", page),
        Route("/static/{name}", static),
        Route("/api/take/{id}.{kind}", take_file),
        Route("/api/transcribe", api_transcribe, methods=["POST"]),
        WebSocketRoute("/ws/live", live),
    ])
    app.state.server = server
    gated = TokenGate(app, token)
    gated.state = app.state
    return gated


# ---------------------------------------------------------------------------------------------------------------
# Upload
# ---------------------------------------------------------------------------------------------------------------
class _TooLarge(Exception):
    pass


async def _transcribe_upload(server: Server, request: Request):
    from kkoma.models.audio import audio_info
    from kkoma.offline.transcribe import notes_csv, notes_json

    limit = int(server.settings.serve.max_upload_mb * 1_000_000)
    too_large = (f"the file is larger than the upload limit of {server.settings.serve.max_upload_mb:g} MB "
                 "(serve.max_upload_mb).")
    fmt = request.query_params.get("format", "mid")
    if fmt not in ("mid", "csv", "json", "ndjson"):
        return _error(400, f"format must be mid, csv, json or ndjson, not {fmt!r}.")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + 64_000:  # multipart framing
        return _error(413, too_large)

    # Count the body as it arrives: a client may send more than its Content-Length says, or none.
    seen = 0
    receive = request.receive

    async def counted():
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit + 64_000:
            raise _TooLarge()
        return message

    limited = Request(request.scope, counted)
    try:
        form = await limited.form(max_files=1, max_fields=8)
    except _TooLarge:
        return _error(413, too_large)
    except ClientDisconnect:
        return _error(400, "the upload was cut off before it ended.")
    except Exception:
        return _error(400, "send the audio file as multipart/form-data, in a field named 'file'.")
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        await form.close()
        return _error(400, "send the audio file as multipart/form-data, in a field named 'file'.")
    name = Path(upload.filename or "upload").name or "upload"
    suffix = "".join(c for c in Path(name).suffix[:8] if c.isalnum() or c == ".")
    path = server.tmp / f"upload-{secrets.token_hex(8)}{suffix}"
    try:
        with open(path, "wb") as fh:
            while chunk := await upload.read(1 << 20):
                fh.write(chunk)
        await form.close()
        if path.stat().st_size > limit:
            return _error(413, too_large)
        try:
            _, _, seconds = await asyncio.to_thread(audio_info, path)
        except KkomaError:
            return _error(415, f"{name} is not an audio file kkoma can read (WAV, FLAC, OGG or MP3).")
        stem = Path(name).stem or "upload"

        if fmt != "ndjson":
            try:
                result = await asyncio.to_thread(server.transcribe_file, path)
            except KkomaError as e:
                return _error(422, _named(str(e), path, name))
            if fmt == "mid":
                data = await asyncio.to_thread(server.midi_bytes, result.notes)
                return Response(data, media_type="audio/midi",
                                headers={"Content-Disposition": f'attachment; filename="{stem}.mid"'})
            if fmt == "csv":
                return Response(notes_csv(result.notes), media_type="text/csv",
                                headers={"Content-Disposition": f'attachment; filename="{stem}.csv"'})
            return Response(notes_json(result.notes, name, result.seconds), media_type="application/json")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return StreamingResponse(_ndjson(server, path, name, seconds), media_type="application/x-ndjson")


def _named(message: str, path: Path, name: str) -> str:
    """An error message about the temporary copy, naming the user's file instead."""
    return message.replace(str(path), name)


async def _ndjson(server: Server, path: Path, name: str, seconds: float):
    """Progress lines ``{"progress": fraction, "seconds": s}`` while the files model runs, then one line
    ``{"notes": [...], "seconds": s, "midi": base64, "csv": text}`` or ``{"error": sentence}``."""
    from kkoma.offline.transcribe import notes_csv

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = 0.0

    def progress(sec: float) -> None:
        nonlocal done
        done += sec
        loop.call_soon_threadsafe(queue.put_nowait, ("progress", done))

    def work():
        try:
            result = server.transcribe_file(path, progress=progress)
            out = ("result", {"notes": _notes_list(result.notes), "seconds": result.seconds,
                              "midi": base64.b64encode(server.midi_bytes(result.notes)).decode(),
                              "csv": notes_csv(result.notes), "name": name})
        except KkomaError as e:
            out = ("error", _named(str(e), path, name))
        except Exception as e:  # reported on the page; the server goes on
            out = ("error", f"the transcription failed ({type(e).__name__}: {e}).")
        finally:
            path.unlink(missing_ok=True)
        loop.call_soon_threadsafe(queue.put_nowait, out)

    yield json.dumps({"progress": 0.0, "seconds": 0.0, "total": seconds}) + "\n"
    task = asyncio.create_task(asyncio.to_thread(work))
    try:
        while True:
            kind, value = await queue.get()
            if kind == "progress":
                yield json.dumps({"progress": min(1.0, value / seconds) if seconds > 0 else 0.0,
                                  "seconds": round(value, 3), "total": seconds}) + "\n"
            elif kind == "result":
                yield json.dumps(value) + "\n"
                break
            else:
                yield json.dumps({"error": value}) + "\n"
                break
    finally:
        await task


# ---------------------------------------------------------------------------------------------------------------
# Live socket
# ---------------------------------------------------------------------------------------------------------------
async def _live_session(server: Server, ws: WebSocket) -> None:
    """One browser's live stream: its own engine on a :class:`SocketInput`; see the module notes for messages."""
    await ws.accept()
    settings = server.settings
    limit = settings.serve.max_clients
    if server.live_clients >= limit:
        await ws.send_json({"type": "error", "message": f"this server already streams to {limit} browser(s) "
                                                       "(serve.max_clients); close one or try again later."})
        await ws.close(code=1013)
        return
    server.live_clients += 1
    engine = source = take_file = sender = None
    take_id = None
    finishing: list = []  # takes being transcribed
    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue = asyncio.Queue()
    try:
        try:
            first = await ws.receive_json()
            rate = int(first.get("rate", 0)) if first.get("type") == "start" else 0
        except (ValueError, TypeError, AttributeError, KeyError):
            rate = 0
        if not 8000 <= rate <= 384000:
            await ws.send_json({"type": "error", "message": "the stream must begin with "
                                                           "{\"type\": \"start\", \"rate\": Hz} (8000 to 384000)."})
            return
        from kkoma.models.audio import check_finite
        from kkoma.realtime.engine import Engine, make_live_transcriber
        from kkoma.realtime.midi_out import NullMidiOut

        def on_event(e, t_emit, velocity):
            loop.call_soon_threadsafe(outbox.put_nowait, {
                "type": "note", "kind": e.kind, "pitch": int(e.pitch), "velocity": int(velocity),
                "t": round(float(e.time), 5), "t_emit": round(float(t_emit), 5)})

        def build():
            src = SocketInput(settings, rate)
            eng = Engine(settings, src, NullMidiOut(settings), transcriber=make_live_transcriber(settings),
                         on_event=on_event)
            eng.start()
            return src, eng

        try:
            source, engine = await asyncio.to_thread(build)
        except KkomaError as e:
            await ws.send_json({"type": "error", "message": str(e)})
            return
        await ws.send_json({"type": "ready", "rate": rate, "model_rate": settings.audio.sample_rate,
                            "budget_ms": {k: round(v, 2) for k, v in engine.budget.items()}})
        sender = asyncio.create_task(_send_loop(ws, outbox, engine, source))
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                if msg.get("bytes") is not None:
                    data = msg["bytes"]
                    if len(data) % 4 or len(data) // 4 > _MAX_BLOCK:
                        raise KkomaError("an audio message must hold whole float32 samples (at most "
                                         f"{_MAX_BLOCK} of them).")
                    x = np.frombuffer(data, dtype="<f4")
                    check_finite(x, "the page's audio")
                    if engine.error is not None or not engine.running:
                        raise KkomaError(f"the live engine stopped ({engine.error}).")
                    if take_file is not None:
                        take_file.write(x)
                    await source.push(x)
                    continue
                try:
                    cmd = json.loads(msg.get("text") or "{}")
                except ValueError:
                    cmd = {}
                kind = cmd.get("type") if isinstance(cmd, dict) else None
                if kind == "record" and cmd.get("on") and take_file is None:
                    import soundfile as sf

                    take_id = secrets.token_hex(4)
                    server.forget_old_takes()
                    wav = server.tmp / f"take-{take_id}.wav"
                    take_file = sf.SoundFile(str(wav), "w", samplerate=rate, channels=1, subtype="FLOAT")
                    server.takes[take_id] = Take(wav)
                    outbox.put_nowait({"type": "recording", "id": take_id, "t": source.received / rate})
                elif kind == "record" and not cmd.get("on") and take_file is not None:
                    take_file.close()
                    take_file = None
                    finishing.append(asyncio.create_task(_finish_take(server, take_id, outbox)))
                elif kind == "end":
                    break
        except WebSocketDisconnect:
            pass
        source.end()
        if take_file is not None:
            take_file.close()
            take_file = None
            finishing.append(asyncio.create_task(_finish_take(server, take_id, outbox)))
        await asyncio.to_thread(engine.join, 30.0)
        for task in finishing:
            await task
        outbox.put_nowait(None)  # the sender drains what is left, then says "ended"
        await sender
    except WebSocketDisconnect:
        pass
    except KkomaError as e:
        await _try_send(ws, {"type": "error", "message": str(e)})
    finally:
        server.live_clients -= 1
        if sender is not None and not sender.done():
            sender.cancel()
        if source is not None:
            source.end()
        if engine is not None:
            engine.stop()
        if take_file is not None:  # ended by an error: what was recorded is still transcribed and kept
            take_file.close()
            task = asyncio.create_task(_finish_take(server, take_id, asyncio.Queue()))
            server.background.add(task)
            task.add_done_callback(server.background.discard)
        try:
            await ws.close()
        except Exception:
            pass


async def _try_send(ws: WebSocket, data: dict) -> bool:
    try:
        await ws.send_json(data)
        return True
    except Exception:  # the page went away: nothing to tell
        return False


async def _send_loop(ws: WebSocket, outbox: asyncio.Queue, engine, source: SocketInput) -> None:
    """Send queued messages as they come, and a status line (stream time, level, compute) every 250 ms."""
    period = 0.25
    alive = True
    while True:
        try:
            item = await asyncio.wait_for(outbox.get(), timeout=period)
        except asyncio.TimeoutError:
            item = {}
        if item is None:
            break
        if alive and item:
            alive = await _try_send(ws, item)
        if alive and (not item or outbox.empty()):
            h = engine.stats.summary()
            level = engine.level_db
            alive = await _try_send(ws, {
                "type": "status", "t_emit": round(engine.t_emit, 4), "received_s": round(source.received /
                                                                                        source.sample_rate, 4),
                "level_db": round(level, 1) if level > -1e9 else None,
                "hop_p50_ms": None if h["p50_ms"] is None else round(h["p50_ms"], 3),
                "error": None if engine.error is None else str(engine.error)})
    if alive:
        report = engine.report()
        await _try_send(ws, {"type": "ended", "events": engine.events_sent, "hops": report["hops_processed"],
                             "hop_compute_ms": report["hop_compute_ms"],
                             "error": None if engine.error is None else str(engine.error)})


async def _finish_take(server: Server, take_id: str, outbox: asyncio.Queue) -> None:
    """The files model on the take's audio (as ``kkoma transcribe`` on that WAV), then a ``take`` message."""
    from kkoma.offline.transcribe import notes_csv

    take = server.takes[take_id]
    outbox.put_nowait({"type": "take_busy", "id": take_id})
    try:
        result = await asyncio.to_thread(server.transcribe_file, take.wav)
        take.midi = await asyncio.to_thread(server.midi_bytes, result.notes)
        take.csv = notes_csv(result.notes)
        take.notes = _notes_list(result.notes)
        outbox.put_nowait({"type": "take", "id": take_id, "seconds": round(result.seconds, 3), "notes": take.notes})
    except Exception as e:
        outbox.put_nowait({"type": "error", "message": f"the take could not be transcribed ({e})."})
