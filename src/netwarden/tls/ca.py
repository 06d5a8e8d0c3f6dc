"""netwarden's certificate authority: made once (`netwarden ca init`), its key readable
by its owner only, its certificate exported for clients to trust."""

from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from netwarden.paths import state_dir, write_private

CA_VALIDITY = datetime.timedelta(days=3650)


class CaError(Exception):
    """The CA is missing, unreadable or broken; the message says what to do."""


def ca_directory(base: Path | None = None) -> Path:
    return (base or state_dir()) / "ca"


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    directory: Path

    @property
    def certificate_path(self) -> Path:
        return self.directory / "ca.pem"

    def fingerprint(self) -> str:
        digest = self.certificate.fingerprint(hashes.SHA256())
        return ":".join(f"{b:02X}" for b in digest)

    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def self_signed_ca(
    key: ec.EllipticCurvePrivateKey, name: x509.Name, validity: datetime.timedelta
) -> x509.Certificate:
    """A CA certificate (it signs leaves only: no intermediate below it), valid from a
    day ago, for clocks a little behind."""
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def create(directory: Path, common_name: str | None = None) -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "netwarden"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, common_name or f"netwarden CA on {socket.gethostname()}"
            ),
        ]
    )
    certificate = self_signed_ca(key, name, CA_VALIDITY)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(directory / "ca.key", key_pem)
    ca = CertificateAuthority(certificate, key, directory)
    write_private(directory / "ca.pem", ca.pem())
    (directory / "ca.pem").chmod(0o644)
    return ca


def load(directory: Path) -> CertificateAuthority:
    key_path, cert_path = directory / "ca.key", directory / "ca.pem"
    try:
        if not key_path.exists() and not cert_path.exists():
            raise CaError(f"no CA in {directory}: make one with `netwarden ca init`")
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        private = not key_path.stat().st_mode & 0o077
    except OSError as exc:  # a directory this user may not read, too
        raise CaError(f"cannot read the CA in {directory}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise CaError(f"cannot read the CA in {directory}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"the CA key in {key_path} is not an EC key")
    if not private:
        raise CaError(f"the CA key {key_path} is readable by others; chmod 600 it")
    return CertificateAuthority(certificate, key, directory)
