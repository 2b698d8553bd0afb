"""``kkoma serve``: a local web page for live transcription from a browser's microphone (a phone on the music stand,
a laptop) and for dropping an audio file to get its MIDI. The app is :mod:`realtime.webapp`; this module parses the
command line, makes the access token (and, with ``--https``, a self-signed certificate), binds the socket, prints
the one URL to open, and runs uvicorn until Ctrl-C.

Only the standard library is imported at module level so ``kkoma --help`` stays instant.
"""
from __future__ import annotations

import argparse
import ipaddress
import signal
import socket
import sys
import threading
from pathlib import Path

from kkoma.models.errors import KkomaError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, metavar="ADDR",
                   help="address to listen on (default: serve.host, 127.0.0.1 = this machine only); 0.0.0.0 "
                        "serves the local network, e.g. a phone (which needs --https for its microphone)")
    p.add_argument("--port", type=int, default=None, metavar="P",
                   help="port (default: serve.port; 0 = any free port, the printed URL says which)")
    p.add_argument("--https", action="store_true",
                   help="serve HTTPS with a self-signed certificate made at start-up: browsers open the "
                        "microphone only on https:// pages (or on localhost); the browser warns once about the "
                        "certificate, compare its SHA-256 fingerprint with the one printed")
    p.add_argument("--max-clients", type=int, default=None, metavar="N",
                   help="browsers streaming live at once, each with its own engine (default: serve.max_clients)")
    p.add_argument("--files-model", metavar="NAME|FILE", default=None,
                   help="the model for the page's files (uploads and recorded takes), as `kkoma transcribe --model` "
                        "takes it: a shipped one by name (`kkoma models`, e.g. pitch) or a weights file (default: "
                        "the files model, offline); --model stays the live stream's, and so do model.weights, "
                        "model.ensemble and model.ensemble_weights of --set and --config")


def _lan_addresses() -> list[str]:
    """This machine's addresses on the local network (no packet is sent: a UDP connect only picks a route)."""
    found = []
    for probe in ("10.255.255.255", "192.168.255.255", "172.31.255.255"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((probe, 1))
                addr = s.getsockname()[0]
        except OSError:
            continue
        if addr not in found and not addr.startswith("127."):
            found.append(addr)
    return found


def make_certificate(folder: Path, names: list[str]) -> tuple[Path, Path, str]:
    """A self-signed certificate (ECDSA P-256, valid 1 year) for ``names`` (host names or IP addresses), written
    as ``cert.pem`` and ``key.pem`` (mode 600) in ``folder``. Returns (cert, key, SHA-256 fingerprint)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    alt = []
    for n in dict.fromkeys(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kkoma serve")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    fp = cert.fingerprint(hashes.SHA256()).hex().upper()
    return cert_path, key_path, ":".join(fp[i:i + 2] for i in range(0, len(fp), 2))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        why = "it is in use (another kkoma serve?)" if e.errno in (98, 48, 10048) else (e.strerror or str(e))
        raise KkomaError(f"cannot listen on {host} port {port}: {why}; choose another with --port.") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _urls(scheme: str, host: str, port: int, token: str) -> list[str]:
    if host in ("0.0.0.0", "::", ""):
        hosts = _lan_addresses() + ["127.0.0.1"]
    else:
        hosts = [host]
    return [f"{scheme}://{f'[{h}]' if ':' in h else h}:{port}/?token={token}" for h in hosts]


def run(args: argparse.Namespace, settings) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ModuleNotFoundError as e:
        raise KkomaError(f"kkoma serve needs the web extra ({e.name} is missing): pip install 'kkoma[web]'.") \
            from None
    import tempfile

    from kkoma.models.settings import load_settings
    from kkoma.realtime.webapp import make_app, new_token

    host = settings.serve.host if args.host is None else args.host
    port = settings.serve.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise KkomaError(f"--port must be from 0 to 65535, not {port}.")
    if args.max_clients is not None:
        if args.max_clients < 1:
            raise KkomaError(f"--max-clients must be 1 or more, not {args.max_clients}.")
        settings = settings.replace(serve__max_clients=str(args.max_clients))
    # The page's files (uploads, recorded takes) get the files model, as `kkoma transcribe` and `kkoma record` do;
    # the keys that name networks (--config, --set) tune the live model (--model's), not this one (--files-model's).
    offline_settings = load_settings(getattr(args, "config", None), getattr(args, "overrides", []), offline=True,
                                     model=getattr(args, "files_model", None), network_keys=False)
    # Its live stream gets the live model: a files-only one (--model pitch) is refused now, not at a pianist's first
    # note.
    from kkoma.models.pipeline import make_transcriber

    make_transcriber(settings, live=True)

    sock = _bind(host, port)
    port = sock.getsockname()[1]
    token = new_token()
    with tempfile.TemporaryDirectory(prefix="kkoma-cert-") as tmp:
        ssl = {}
        fingerprint = None
        if args.https:
            try:
                names = ["localhost", "127.0.0.1", socket.gethostname()]
                # The network's addresses only when serving the network: a localhost server needs none.
                names += _lan_addresses() if host in ("0.0.0.0", "::", "") else [host]
                cert, key, fingerprint = make_certificate(Path(tmp), names)
            except ModuleNotFoundError:
                sock.close()
                raise KkomaError("--https needs the cryptography package: pip install 'kkoma[web]'.") from None
            ssl = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
        app = make_app(settings, offline_settings, token)
        scheme = "https" if args.https else "http"
        urls = _urls(scheme, host, port, token)
        print(f"kkoma serve: open {urls[0]}", flush=True)
        for u in urls[1:]:
            print(f"             or {u}", flush=True)
        if fingerprint:
            print(f"kkoma serve: self-signed certificate, SHA-256 {fingerprint}", flush=True)
        if host in ("0.0.0.0", "::") and not args.https:
            print("kkoma serve: a phone's browser opens the microphone only on https:// pages: add --https.",
                  file=sys.stderr, flush=True)
        print("kkoma serve: Ctrl-C stops the server.", file=sys.stderr, flush=True)
        config = uvicorn.Config(app, log_level="warning", lifespan="off",
                                ws_max_size=4 * 1024 * 1024, **ssl)
        server = uvicorn.Server(config)
        # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for the handler it found: make
        # that one an exception, so the temporary files (takes, certificate) are removed here, as after Ctrl-C.
        prev_term = None
        if threading.current_thread() is threading.main_thread():
            prev_term = signal.signal(signal.SIGTERM, _terminated)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the normal way to stop
            pass
        finally:
            if prev_term is not None:
                signal.signal(signal.SIGTERM, prev_term)
            app.state.server.close()
            sock.close()
    return 0


def _terminated(signum, frame):
    raise KeyboardInterrupt()
