"""Leaf certificates signed on the fly, one per set of server names: EC P-256, valid
for a short time, kept in memory and on disk, made again before they expire."""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import ipaddress
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from netwarden.paths import write_private
from netwarden.tls.ca import CertificateAuthority

LEAF_VALIDITY = datetime.timedelta(days=7)
RENEW_BEFORE = datetime.timedelta(days=1)


@functools.lru_cache(maxsize=1024)  # a server presents the same certificate each time
def names_of(certificate_der: bytes | None, server_name: str | None) -> tuple[str, ...]:
    """The names a leaf must carry: the upstream certificate's subject alternative names
    (copied), and the name the client asked for."""
    names: list[str] = []
    if certificate_der:
        try:
            upstream = x509.load_der_x509_certificate(certificate_der)
            alternatives = upstream.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
            names += alternatives.get_values_for_type(x509.DNSName)
            names += [str(a) for a in alternatives.get_values_for_type(x509.IPAddress)]
        except (ValueError, x509.ExtensionNotFound):
            pass
    if server_name and server_name not in names:
        names.insert(0, server_name)
    return tuple(dict.fromkeys(n.lower() for n in names))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class LeafStore:
    """Leaves for one CA. `chain_file(names)` gives a PEM file (key + certificate + CA)
    for ssl's load_cert_chain."""

    def __init__(self, ca: CertificateAuthority, directory: Path) -> None:
        self.ca = ca
        self.directory = directory
        self._lock = threading.Lock()
        self._files: dict[tuple[str, ...], tuple[Path, datetime.datetime]] = {}
        self._key = self._leaf_key()
        self._forget_expired()

    def _forget_expired(self) -> None:
        """Leaves signed longer ago than they are valid: gone from the disk (one file
        per host ever intercepted would otherwise pile up)."""
        oldest = time.time() - LEAF_VALIDITY.total_seconds()
        for path in self.directory.glob("*.pem"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < oldest:
                    path.unlink()

    def _leaf_key(self) -> ec.EllipticCurvePrivateKey:
        """One key for every leaf (as mitmproxy does): a leaf then costs one signature."""
        path = self.directory / "leaf.key"
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return key
        except (OSError, ValueError):
            pass
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return key

    def chain_file(self, names: tuple[str, ...]) -> Path:
        return self.leaf(names)[0]

    def leaf(self, names: tuple[str, ...]) -> tuple[Path, datetime.datetime]:
        """The chain file for names and when its leaf expires (signed anew when it
        would expire within RENEW_BEFORE)."""
        if not names:
            raise ValueError("a leaf certificate needs at least one name")
        now = datetime.datetime.now(datetime.UTC)
        with self._lock:
            known = self._files.get(names)
            if known is not None and known[1] - now > RENEW_BEFORE:
                return known
            path = self.directory / (
                hashlib.sha256("\n".join(names).encode()).hexdigest()[:32] + ".pem"
            )
            expires = self._valid_until(path)
            if expires is None or expires - now <= RENEW_BEFORE:
                expires = self._sign(names, path, now)
            self._files[names] = (path, expires)
            return path, expires

    def _valid_until(self, path: Path) -> datetime.datetime | None:
        try:
            certificate = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            return None
        if certificate.issuer != self.ca.certificate.subject:
            return None  # signed by an earlier CA
        return certificate.not_valid_after_utc

    def _sign(
        self, names: tuple[str, ...], path: Path, now: datetime.datetime
    ) -> datetime.datetime:
        expires = now + LEAF_VALIDITY
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
            .issuer_name(self.ca.certificate.subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(expires)
            .add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca.key.public_key()),
                critical=False,
            )
            .sign(self.ca.key, hashes.SHA256())
        )
        key_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(
            path, key_pem + certificate.public_bytes(serialization.Encoding.PEM) + self.ca.pem()
        )
        return expires
