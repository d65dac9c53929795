"""chalkd's own CA and the certificate of its worker listener (workers on other swarm nodes).

Workers on other nodes dial chalkd at ``--advertise-addr`` over TLS and check
its certificate against chalkd's own CA, which travels to them as a Swarm
secret beside the replica's key. Both live in ``<home>/tls/`` (0700):

- ``ca.key`` / ``ca.pem``: an EC P-256 CA valid 10 years, made once and kept
  across restarts (a worker's CA secret stays good while the daemon restarts);
- ``server.key`` / ``server.pem``: the listener's certificate, signed by that
  CA, valid one year, with an IP SAN per IP address and a DNS SAN per name
  given; made again when the address set changes, when it expires within 30
  days, or when it no longer matches the CA or its key.

Every file is 0600, written atomically (a temporary file, then ``os.replace``)
and opened without following symlinks. A ``tls`` directory that is a symlink,
not a directory or owned by another user stops the daemon with a message
naming it: another local user who made it first could otherwise read the CA
key or plant a CA of their own.

    tls = ensure_worker_tls(home, ["10.231.0.1"])
    await grpc_server.start(host, port, ssl=tls.server_context())
    secret_name = f"chalkd-ca-{tls.fingerprint}"   # the CA's bytes: tls.ca_pem
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import re
import secrets
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TLSDirError", "WorkerTLS", "ensure_worker_tls", "tls_dir"]

log = logging.getLogger(__name__)

CA_DAYS = 3650
SERVER_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)
# Nodes' clocks differ: a certificate made now must already be valid on a node a little behind.
BACKDATE = datetime.timedelta(hours=1)
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


class TLSDirError(PermissionError):
    """``<home>/tls`` or a file in it is not safe to use (a symlink, another user's, open to others)."""


@dataclass(frozen=True)
class WorkerTLS:
    """What the worker listener serves and what its workers need to check it.

    ``ca_pem`` goes to workers (a Swarm secret named by ``fingerprint``, the
    first 16 hex digits of the CA certificate's SHA-256); ``cert_path`` and
    ``key_path`` are the listener's chain and key; ``addresses`` its SANs.
    """

    ca_pem: bytes
    cert_path: Path
    key_path: Path
    fingerprint: str
    addresses: tuple[str, ...]

    def server_context(self) -> ssl.SSLContext:
        """A server context for the worker listener: TLS 1.2+, ALPN h2 (gRPC), this certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_path, self.key_path)
        ctx.set_alpn_protocols(["h2"])
        return ctx


def tls_dir(home: Path) -> Path:
    """``<home>/tls``, made 0700 when missing; :class:`TLSDirError` when it is not ours alone."""
    path = Path(home) / "tls"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = path.lstat()
    uid = os.getuid()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise TLSDirError(f"{path} must be a directory, not a {'symlink' if stat.S_ISLNK(st.st_mode) else 'file'}: "
                          "remove it and start chalkd again to make chalkd's TLS CA there")
    if st.st_uid != uid:
        raise TLSDirError(f"{path} belongs to uid {st.st_uid}, not to chalkd's uid {uid}: another user may have "
                          "made it to read or plant chalkd's CA; remove it and start chalkd again")
    if st.st_mode & 0o022:
        raise TLSDirError(f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): its CA cannot be "
                          "trusted; remove the directory and start chalkd again")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours and not writable by others: only tightened
    return path


def ensure_worker_tls(home: Path, addresses: list[str]) -> WorkerTLS:
    """chalkd's CA (made once) and a server certificate for ``addresses`` (hosts, no ports: IPs and
    DNS names), made again when needed. See the module docstring; ValueError for a bad address.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as home:
    ...     tls = ensure_worker_tls(Path(home), ["10.0.0.1", "chalkd.local"])
    >>> tls.addresses, len(tls.fingerprint)
    (('10.0.0.1', 'chalkd.local'), 16)
    """
    sans = _check_addresses(addresses)
    home = Path(home)
    directory = tls_dir(home)
    ca_cert, ca_key = _ensure_ca(directory, home)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    reason = _server_stale(cert_path, key_path, ca_cert, sans)
    if reason:
        _make_server(cert_path, key_path, ca_cert, ca_key, sans)
        log.info("made a TLS certificate for chalkd's worker listener (%s): %s", reason, ", ".join(sans))
    fingerprint = hashlib.sha256(ca_cert.public_bytes(serialization.Encoding.DER)).hexdigest()[:16]
    return WorkerTLS(ca_pem=ca_pem, cert_path=cert_path, key_path=key_path, fingerprint=fingerprint,
                     addresses=tuple(sans))


# -- the CA ---------------------------------------------------------------------------------


def _ensure_ca(directory: Path, home: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key_path, cert_path = directory / "ca.key", directory / "ca.pem"
    key_bytes, cert_bytes = _read_private(key_path), _read_private(cert_path)
    if key_bytes is not None and cert_bytes is not None:
        try:
            key = serialization.load_pem_private_key(key_bytes, password=None)
            cert = x509.load_pem_x509_certificate(cert_bytes)
        except ValueError as exc:
            log.warning("chalkd's TLS CA in %s cannot be read (%s): making a new one", directory, exc)
        else:
            if not isinstance(key, ec.EllipticCurvePrivateKey) or _pub(key) != _pub_of(cert):
                log.warning("chalkd's TLS CA key and certificate in %s do not match: making a new CA", directory)
            elif cert.not_valid_after_utc - _now() < RENEW_BEFORE:
                log.warning("chalkd's TLS CA in %s expires on %s: making a new one (workers get the new CA "
                            "with their next start)", directory, cert.not_valid_after_utc.date())
            else:
                return cert, key
    elif key_bytes is not None or cert_bytes is not None:
        log.warning("chalkd's TLS CA in %s is incomplete: making a new one", directory)
    key = ec.generate_private_key(ec.SECP256R1())
    label = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:8]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"chalkd CA {label}")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # The key first: a stop between the two writes leaves a pair that does not match, made anew above.
    _write_private(key_path, _key_pem(key))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    log.info("made chalkd's TLS CA in %s (workers on other nodes check the daemon with it)", directory)
    return cert, key


# -- the server certificate -------------------------------------------------------------------


def _server_stale(cert_path: Path, key_path: Path, ca: x509.Certificate, sans: list[str]) -> str:
    """Why the server certificate must be made again ("" when it is good)."""
    cert_bytes, key_bytes = _read_private(cert_path), _read_private(key_path)
    if cert_bytes is None or key_bytes is None:
        return "none yet"
    try:
        cert = x509.load_pem_x509_certificate(cert_bytes)
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except ValueError:
        return "the old one cannot be read"
    if _pub(key) != _pub_of(cert):
        return "its key does not match"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by the current CA"
    if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return f"it expires on {cert.not_valid_after_utc.date()}"
    if sorted(_sans_of(cert)) != sorted(sans):
        return "the addresses changed"
    return ""


def _make_server(cert_path: Path, key_path: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                 sans: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for address in sans:
        ip = _as_ip(address)
        names.append(x509.IPAddress(ip) if ip is not None else x509.DNSName(address))
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"chalkd {sans[0]}"[:64])]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    # The key first: until the new certificate replaces the old one they do not match, and a
    # start in between makes both again.
    _write_private(key_path, _key_pem(key))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _sans_of(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return ([str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
            + [name.lower() for name in ext.get_values_for_type(x509.DNSName)])


# -- addresses --------------------------------------------------------------------------------


def _as_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def _check_addresses(addresses: list[str]) -> list[str]:
    """Each address once, normalised (an IP's canonical spelling, a lower-case name), order kept."""
    if isinstance(addresses, str) or not addresses:
        raise ValueError(f"addresses must be a non-empty list of IPs or DNS names, got {addresses!r}")
    out: list[str] = []
    for raw in addresses:
        address = raw.strip().strip("[]") if isinstance(raw, str) else raw
        if not isinstance(address, str) or not address:
            raise ValueError(f"address {raw!r} is not an IP or a DNS name")
        ip = _as_ip(address)
        if ip is not None:
            if ip.is_unspecified:
                raise ValueError(f"address {raw!r} is the unspecified address: workers cannot dial it; "
                                 "give the address they reach (--advertise-addr)")
            norm = str(ip)
        elif _DNS_NAME.fullmatch(address) and not address.replace(".", "").isdigit():
            norm = address.rstrip(".").lower()
        else:
            raise ValueError(f"address {raw!r} is not an IP or a DNS name (give the host alone, without a port)")
        if norm not in out:
            out.append(norm)
    return out


# -- files ------------------------------------------------------------------------------------


def _read_private(path: Path) -> bytes | None:
    """The bytes of our own 0600 regular file (never through a symlink), None when missing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink
        raise TLSDirError(f"{path} cannot be opened as a regular file ({exc.strerror}): remove it") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise TLSDirError(f"{path} must be a regular file owned by uid {os.getuid()} with mode 0600 "
                              f"(is mode {stat.S_IMODE(st.st_mode):o}, uid {st.st_uid}); remove it to make a new one")
        return f.read()


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (0600) atomically: a new file beside it, then os.replace."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # the rename itself survives a power loss
    finally:
        os.close(dfd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pub(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pub_of(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
