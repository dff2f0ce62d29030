"""A reverse proxy on 127.0.0.1 in front of an S3 server (moto) or a DICOMweb archive (Orthanc) that fails a share of
the requests, as servers do under load: every ``slow_down_every``-th request is answered 503 SlowDown, every
``reset_every``-th has its connection reset without an answer, every ``too_many_every``-th (0: none) is answered
429 Too Many Requests with ``Retry-After: retry_after`` seconds; the others are forwarded unchanged. With
``certificate`` (a PEM file holding a certificate and its key: self_signed_certificate) it answers over https.

    with FaultyS3Proxy(endpoint, slow_down_every=5, reset_every=7) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint   # clients now talk to S3 through the faults
        ...
        proxy.injected   # {"slow_down": n, "reset": m, "too_many": k}
        proxy.requests   # every request it received, in order: (method, path)
        proxy.waits_after_too_many   # seconds from each 429 to the next request (a client's retry, when it is alone)
"""

from __future__ import annotations

import http.client
import itertools
import socket
import ssl
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


class FaultyS3Proxy:
    def __init__(
        self,
        upstream: str,
        *,
        slow_down_every: int = 5,
        reset_every: int = 7,
        too_many_every: int = 0,
        retry_after: int = 1,
        certificate: Path | None = None,
    ):
        self.upstream = urlparse(upstream)
        self.slow_down_every, self.reset_every, self.too_many_every, self.retry_after = (
            slow_down_every,
            reset_every,
            too_many_every,
            retry_after,
        )
        self.injected = {"slow_down": 0, "reset": 0, "too_many": 0}
        self.requests: list[tuple[str, str]] = []
        self.waits_after_too_many: list[float] = []
        self._too_many_at: float | None = None
        self._count, self._lock = itertools.count(1), threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        if certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certificate)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.endpoint = f"{'https' if certificate else 'http'}://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultyS3Proxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _fault(self) -> str | None:
        with self._lock:
            count, now = next(self._count), time.monotonic()
            if self._too_many_at is not None:
                self.waits_after_too_many.append(now - self._too_many_at)
                self._too_many_at = None
            fault = (
                "slow_down" if count % self.slow_down_every == 0 else "reset" if count % self.reset_every == 0 else None
            )
            fault = "too_many" if self.too_many_every and count % self.too_many_every == 0 else fault
            if fault:
                self.injected[fault] += 1
            return fault

    def _answered_too_many(self) -> None:
        with self._lock:
            self._too_many_at = time.monotonic()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def setup(self) -> None:
                super().setup()
                # headers and body go out in separate writes: without this, Nagle's algorithm holds the body until the
                # client's delayed ACK (40 ms on Linux), and every request through the proxy took about 45 ms
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests.append((self.command, self.path))
                fault = proxy._fault()
                self._inject(fault) if fault else self._forward(body)

            def _inject(self, fault: str) -> None:
                if fault == "reset":  # RST instead of an answer: botocore sees the connection closed
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                elif fault == "slow_down":
                    self._answer(503, [("Content-Type", "application/xml")], SLOW_DOWN)
                elif fault == "too_many":
                    headers = [("Retry-After", str(proxy.retry_after)), ("Content-Type", "text/plain")]
                    self._answer(429, headers, b"Too Many Requests")
                    proxy._answered_too_many()

            def _forward(self, body: bytes) -> None:
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = b"" if self.command == "HEAD" else response.read()
                    skipped = HOP_BY_HOP | {"content-length"}
                    headers = [(k, v) for k, v in response.getheaders() if k.lower() not in skipped]
                    self._answer(response.status, headers, payload, head_length=response.getheader("Content-Length"))
                finally:
                    upstream.close()

            def _answer(self, status: int, headers, payload: bytes, head_length: str | None = None) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header(
                    "Content-Length", head_length if self.command == "HEAD" and head_length else str(len(payload))
                )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

        return Handler


def self_signed_certificate(folder: Path) -> Path:
    """A PEM file with a self-signed certificate for 127.0.0.1 and its private key (FaultyS3Proxy's ``certificate``;
    the certificate is also the CA bundle that trusts it)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sslflow test archive")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "archive-certificate.pem"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM) + key_pem)
    return path
