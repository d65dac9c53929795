"""chalkd's own CA and worker-listener certificate (chalkd.tls): made once, re-made when needed,
private files, a hostile ``tls`` directory refused, and what a client's check makes of them."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from chalkcompute._auth import client_ssl_context
from chalkd import tls as tlsmod
from chalkd.tls import TLSDirError, ensure_worker_tls

pytestmark = pytest.mark.timeout(60)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(path: Path) -> tuple[list, list]:
    ext = _cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.IPAddress), ext.get_values_for_type(x509.DNSName)


def test_the_ca_is_made_once_and_kept_and_the_server_cert_only_when_needed(tmp_path):
    first = ensure_worker_tls(tmp_path, ["10.231.0.1"])
    d = tmp_path / "tls"
    ca_key, server = (d / "ca.key").read_bytes(), first.cert_path.read_bytes()
    again = ensure_worker_tls(tmp_path, ["10.231.0.1"])  # a restart with the same address
    assert again == first
    assert (d / "ca.key").read_bytes() == ca_key and first.cert_path.read_bytes() == server
    assert first.ca_pem == (d / "ca.pem").read_bytes()
    ca = _cert(d / "ca.pem")
    assert ca.subject.rfc4514_string().startswith("CN=chalkd CA ")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3650
    assert len(first.fingerprint) == 16 and int(first.fingerprint, 16) >= 0

    moved = ensure_worker_tls(tmp_path, ["10.231.0.2", "chalkd.example"])  # the advertise address changed
    assert moved.fingerprint == first.fingerprint and (d / "ca.key").read_bytes() == ca_key
    assert moved.cert_path.read_bytes() != server
    _cert(moved.cert_path).verify_directly_issued_by(ca)


def test_sans_are_ip_for_ips_and_dns_for_names_nothing_more(tmp_path):
    tls = ensure_worker_tls(tmp_path, ["10.231.0.1", "[fd00::5]", "Node-1.Example", "10.231.0.1"])
    assert tls.addresses == ("10.231.0.1", "fd00::5", "node-1.example")
    ips, names = _sans(tls.cert_path)
    assert sorted(map(str, ips)) == ["10.231.0.1", "fd00::5"]
    assert all(isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) for ip in ips)
    assert names == ["node-1.example"]  # no localhost, no 127.0.0.1 added


@pytest.mark.parametrize("bad", [[], ["10.0.0.1:50051"], ["0.0.0.0"], ["1.2.3"], ["bad name"], [""]])
def test_a_bad_address_is_refused_naming_it(tmp_path, bad):
    with pytest.raises(ValueError, match="address"):
        ensure_worker_tls(tmp_path, bad)


def test_files_are_private(tmp_path):
    ensure_worker_tls(tmp_path, ["10.231.0.1"])
    d = tmp_path / "tls"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    names = sorted(p.name for p in d.iterdir())
    assert names == ["ca.key", "ca.pem", "server.key", "server.pem"]  # no temporary file left behind
    for p in d.iterdir():
        assert stat.S_IMODE(p.lstat().st_mode) == 0o600, p


def test_an_expiring_server_cert_is_made_again(tmp_path, monkeypatch):
    monkeypatch.setattr(tlsmod, "SERVER_DAYS", 10)  # inside the 30 days' renewal margin
    short = ensure_worker_tls(tmp_path, ["10.231.0.1"])
    old = short.cert_path.read_bytes()
    monkeypatch.setattr(tlsmod, "SERVER_DAYS", 365)
    renewed = ensure_worker_tls(tmp_path, ["10.231.0.1"])
    assert renewed.cert_path.read_bytes() != old
    cert = _cert(renewed.cert_path)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 365


def test_a_half_written_ca_is_made_again_and_the_server_cert_follows(tmp_path):
    first = ensure_worker_tls(tmp_path, ["10.231.0.1"])
    d = tmp_path / "tls"
    (d / "ca.pem").unlink()  # a stop between the CA's two writes
    second = ensure_worker_tls(tmp_path, ["10.231.0.1"])
    assert second.fingerprint != first.fingerprint
    _cert(second.cert_path).verify_directly_issued_by(_cert(d / "ca.pem"))


def test_a_symlinked_tls_dir_is_refused(tmp_path):
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o700)
    home = tmp_path / "home"
    home.mkdir()
    (home / "tls").symlink_to(elsewhere)
    with pytest.raises(TLSDirError, match="symlink"):
        ensure_worker_tls(home, ["10.231.0.1"])
    assert list(elsewhere.iterdir()) == []  # nothing was written through it


def test_a_tls_dir_writable_by_others_is_refused(tmp_path):
    (tmp_path / "tls").mkdir()
    os.chmod(tmp_path / "tls", 0o777)
    with pytest.raises(TLSDirError, match="writable by others"):
        ensure_worker_tls(tmp_path, ["10.231.0.1"])


def test_a_tls_dir_of_ours_readable_by_others_is_tightened(tmp_path):
    (tmp_path / "tls").mkdir()
    os.chmod(tmp_path / "tls", 0o755)
    ensure_worker_tls(tmp_path, ["10.231.0.1"])
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700


def test_a_server_key_that_does_not_match_its_certificate_is_made_again(tmp_path):
    first = ensure_worker_tls(tmp_path, ["10.231.0.1"])
    ca_key = (tmp_path / "tls" / "ca.key").read_bytes()
    os.replace(tmp_path / "tls" / "ca.key", tmp_path / "saved")
    (tmp_path / "tls" / "server.key").write_bytes((tmp_path / "saved").read_bytes())  # a key, not its own
    os.replace(tmp_path / "saved", tmp_path / "tls" / "ca.key")
    again = ensure_worker_tls(tmp_path, ["10.231.0.1"])
    assert again.fingerprint == first.fingerprint and (tmp_path / "tls" / "ca.key").read_bytes() == ca_key
    again.server_context()  # loads: the pair matches again


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory another user owns needs root")
def test_a_tls_dir_another_user_made_is_refused(tmp_path):
    # Another local user made <home>/tls first, to read chalkd's CA key or plant a CA of their own.
    planted = tmp_path / "tls"
    planted.mkdir(mode=0o700)
    os.chown(planted, 4242, 4242)
    with pytest.raises(TLSDirError, match="uid 4242"):
        ensure_worker_tls(tmp_path, ["10.231.0.1"])
    assert list(planted.iterdir()) == []


def test_a_symlinked_or_foreign_key_file_is_refused(tmp_path):
    ensure_worker_tls(tmp_path, ["10.231.0.1"])
    d = tmp_path / "tls"
    target = tmp_path / "their-key"
    target.write_bytes((d / "ca.key").read_bytes())
    (d / "ca.key").unlink()
    (d / "ca.key").symlink_to(target)
    with pytest.raises(TLSDirError, match="ca.key"):
        ensure_worker_tls(tmp_path, ["10.231.0.1"])
    (d / "ca.key").unlink()
    target.rename(d / "ca.key")
    os.chmod(d / "ca.key", 0o644)
    with pytest.raises(TLSDirError, match="mode 0600"):
        ensure_worker_tls(tmp_path, ["10.231.0.1"])


# -- what a client's check makes of the certificate ----------------------------------------------


async def _handshake(tls, ca_file: Path, server_hostname: str) -> str | None:
    """TLS to a listener with ``tls.server_context()``; the ALPN the client got."""
    async def serve(reader, writer):
        try:
            await reader.read(1)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls.server_context())
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ssl_context(str(ca_file)), server_hostname=server_hostname), 20)
        alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.close()
        await writer.wait_closed()
        return alpn
    finally:
        server.close()
        await server.wait_closed()


def test_a_client_with_the_ca_verifies_the_server(tmp_path):
    tls = ensure_worker_tls(tmp_path, ["127.0.0.1"])
    assert asyncio.run(_handshake(tls, tmp_path / "tls" / "ca.pem", "127.0.0.1")) == "h2"


def test_a_client_with_another_ca_refuses_the_server(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    tls = ensure_worker_tls(tmp_path / "a", ["127.0.0.1"])
    ensure_worker_tls(tmp_path / "b", ["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        asyncio.run(_handshake(tls, tmp_path / "b" / "tls" / "ca.pem", "127.0.0.1"))


def test_a_certificate_for_another_ip_fails_the_hostname_check(tmp_path):
    tls = ensure_worker_tls(tmp_path, ["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        asyncio.run(_handshake(tls, tmp_path / "tls" / "ca.pem", "127.0.0.2"))


def test_the_server_context_refuses_tls_1_1(tmp_path):
    tls = ensure_worker_tls(tmp_path, ["127.0.0.1"])
    assert tls.server_context().minimum_version >= ssl.TLSVersion.TLSv1_2
