"""The --tls certificate: a real TLS handshake on loopback, verified by a client that trusts it."""

from __future__ import annotations

import ssl
import stat

import aiohttp
import pytest
from aiohttp import web

from calliope_hub.localecs.tls import self_signed_certificate


async def test_certificate_serves_https_verified_for_127_0_0_1_and_localhost(tmp_path):
    cert, key = self_signed_certificate(tmp_path / "tls", "127.0.0.1")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))

    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text="ok"))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context).start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            for host in ("127.0.0.1", "localhost"):
                async with session.get(f"https://{host}:{port}/", ssl=client_context) as answer:
                    assert await answer.text() == "ok"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # trust is what makes it work
                await session.get(f"https://127.0.0.1:{port}/", ssl=ssl.create_default_context())
    finally:
        await runner.cleanup()


def test_certificate_names_a_dns_host(tmp_path):
    from cryptography import x509

    cert, _ = self_signed_certificate(tmp_path, "ecs.local")
    extensions = x509.load_pem_x509_certificate(cert.read_bytes()).extensions
    names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["ecs.local", "localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
