"""TLS without OpenSSL: HttpConsumer (``https://``) and SocketIOConsumer (``wss://`` and
``https://``) against real TLS servers, through rustls.

Each test makes a throwaway certificate authority with ``trustme`` and a server
certificate for 127.0.0.1: an aiohttp HTTPS server that records requests
(``helpers/http_server.py``) and a python-socketio server over TLS
(``helpers/sio_tls_server.py``). Trusting the CA through ``ca_file`` delivers;
without it the attempt fails with the certificate error in the dead letter's
reason; a server that requires a client certificate gets ours (mutual TLS).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from conftest import make_event
from helpers.http_server import RecordingServer
from mpm_events import HttpConsumer

trustme = pytest.importorskip("trustme")


class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as files."""

    def __init__(self, d: Path) -> None:
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.client = self.ca.issue_cert("client.mpm-events.test")
        self.ca_file = d / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.client_cert = d / "client.pem"
        self.client_key = d / "client.key"
        for pem in self.client.cert_chain_pems:
            pem.write_to_path(str(self.client_cert), append=True)
        self.client.private_key_pem.write_to_path(str(self.client_key))
        self.server_cert = d / "server.pem"
        self.server_key = d / "server.key"
        for pem in self.server.cert_chain_pems:
            pem.write_to_path(str(self.server_cert), append=True)
        self.server.private_key_pem.write_to_path(str(self.server_key))

    def server_context(self, require_client_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(ctx)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture
def pki(tmp_path) -> Pki:
    return Pki(tmp_path)


async def test_https_with_the_ca_file_delivers(pki, started_bus):
    with RecordingServer(pki.server_context()) as server:
        assert server.url.startswith("https://127.0.0.1:")
        consumer = HttpConsumer(server.url, ca_file=str(pki.ca_file))
        bus = await started_bus("memory")
        assert await bus.subscribe(consumer)
        e = make_event(data={"session_id": "tls-1"})
        assert await bus.publish(e)
        assert await bus.join(timeout=10)
        (req,) = server.requests
        assert req.json()["data"]["id"] == e.id
        assert bus.get_dead_letters() == []
        assert consumer.get_metrics()["events_delivered"] == 1


async def test_https_without_the_ca_file_fails_with_a_certificate_error(pki, started_bus):
    with RecordingServer(pki.server_context()) as server:
        consumer = HttpConsumer(server.url, max_retries=1, retry_delay=0.01)
        bus = await started_bus("memory")
        assert await bus.subscribe(consumer)
        assert await bus.publish(make_event())
        assert await bus.join(timeout=10)
        assert server.requests == [], "nothing reached the server"
        (dl,) = bus.get_dead_letters()
        assert dl["attempts"] == 2
        assert "certificate" in dl["errors"][-1].lower(), dl["errors"]
        assert "UnknownIssuer" in dl["errors"][-1], dl["errors"]
        assert consumer.get_metrics()["connection_errors"] == 2


async def test_mutual_tls_presents_the_client_certificate(pki, started_bus):
    with RecordingServer(pki.server_context(require_client_cert=True)) as server:
        with_cert = HttpConsumer(
            server.url,
            ca_file=pki.ca_file,
            client_cert=pki.client_cert,
            client_key=pki.client_key,
            topics=["with"],
            name="with-cert",
        )
        without = HttpConsumer(
            server.url, ca_file=pki.ca_file, max_retries=0, topics=["without"], name="without"
        )
        bus = await started_bus("memory")
        assert await bus.subscribe(with_cert)
        assert await bus.subscribe(without)
        assert await bus.publish(make_event("with"))
        assert await bus.publish(make_event("without"))
        assert await bus.join(timeout=10)
        (req,) = server.requests
        subject = dict(x[0] for x in req.peercert["subject"]) if req.peercert else {}
        sans = {v for _, v in req.peercert.get("subjectAltName", ())} if req.peercert else set()
        assert "client.mpm-events.test" in {*subject.values(), *sans}, req.peercert
        (dl,) = bus.get_dead_letters()
        assert dl["consumer"] == "without"
