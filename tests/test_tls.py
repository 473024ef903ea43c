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
import sys
from pathlib import Path

import pytest
from conftest import make_event, wait_until
from helpers.http_server import RecordingServer
from helpers.sio_helpers import Server
from mpm_events import ConsumerConfigError, HttpConsumer, SocketIOConsumer

SIO_TLS = Path(__file__).parent / "helpers" / "sio_tls_server.py"

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


@pytest.fixture
async def sio_tls(pki):
    """``await sio_tls(require_client_cert=False)``: a started Socket.IO server over TLS."""
    servers: list[Server] = []

    async def start(require_client_cert: bool = False) -> Server:
        s = Server()
        s.args = [sys.executable, str(SIO_TLS), "--cert", str(pki.server_cert)]
        s.args += ["--key", str(pki.server_key)]
        if require_client_cert:
            s.args += ["--client-ca", str(pki.ca_file)]
        servers.append(s)
        return await s.start()

    try:
        yield start
    finally:
        for s in servers:
            await s.stop()


@pytest.mark.parametrize("scheme", ["https", "wss"])
async def test_socketio_over_tls_with_the_ca_file_delivers(pki, sio_tls, started_bus, scheme):
    server = await sio_tls()
    consumer = SocketIOConsumer(
        url=f"{scheme}://127.0.0.1:{server.port}", ca_file=pki.ca_file, reconnect_delay=0.1
    )
    bus = await started_bus("memory")
    assert await bus.subscribe(consumer)
    e = make_event(data={"session_id": "wss-1"})
    assert await bus.publish(e)
    await server.wait_for(lambda: len(server.events()) == 1)
    (got,) = server.events()
    assert (got["event"], got["data"]["id"], got["data"]["session_id"]) == (
        "claude_event",
        e.id,
        "wss-1",
    )
    await bus.stop(timeout=10)
    assert bus.get_dead_letters() == []


async def test_socketio_over_tls_without_the_ca_file_fails_with_a_certificate_error(
    sio_tls, started_bus
):
    server = await sio_tls()
    consumer = SocketIOConsumer(
        url=f"wss://127.0.0.1:{server.port}", reconnect_delay=0.1, flush_timeout=1.0
    )
    bus = await started_bus("memory")
    assert await bus.subscribe(consumer)
    assert await bus.publish(make_event())
    await wait_until(lambda: consumer.get_metrics()["last_error"] is not None)
    assert "certificate" in consumer.get_metrics()["last_error"].lower()
    await bus.stop(timeout=10)
    assert server.connects() == []
    (dl,) = bus.get_dead_letters()
    assert "certificate" in dl["errors"][-1].lower(), dl["errors"]


async def test_socketio_mutual_tls(pki, sio_tls, started_bus):
    server = await sio_tls(require_client_cert=True)
    consumer = SocketIOConsumer(
        url=f"https://127.0.0.1:{server.port}",
        ca_file=pki.ca_file,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        reconnect_delay=0.1,
    )
    no_cert = SocketIOConsumer(
        url=f"https://127.0.0.1:{server.port}",
        ca_file=pki.ca_file,
        reconnect_delay=0.1,
        flush_timeout=1.0,
        name="no-cert",
    )
    bus = await started_bus("memory")
    assert await bus.subscribe(consumer)
    assert await bus.subscribe(no_cert)
    assert await bus.publish(make_event())
    await server.wait_for(lambda: len(server.events()) == 1)
    await wait_until(lambda: no_cert.get_metrics()["last_error"] is not None)
    await bus.stop(timeout=10)
    assert len(server.connects()) == 1, "only the consumer with the certificate got in"
    (dl,) = bus.get_dead_letters()
    assert dl["consumer"] == "no-cert"


def test_socketio_bad_tls_files_are_named(tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("nothing\n")
    with pytest.raises(ConsumerConfigError, match=r"ca_file .*garbage\.pem.*no PEM certificate"):
        SocketIOConsumer(url="wss://127.0.0.1:1", ca_file=garbage)
    with pytest.raises(ConsumerConfigError, match="client_cert needs client_key"):
        SocketIOConsumer(url="wss://127.0.0.1:1", client_cert=garbage)
    with pytest.raises(ConsumerConfigError, match=r"ca_file .*missing\.pem.*cannot read it"):
        SocketIOConsumer(url="wss://127.0.0.1:1", ca_file=tmp_path / "missing.pem")
