"""Certificates for the mutual-TLS channel between Envoy and the ext_proc servers (`babelgate certs`), and the
server's TLS context.

One private CA signs a server certificate (SAN: the name Envoy checks, plus any extra names) and a client certificate
for Envoy. Nothing else trusts this CA, so a certificate it signed proves exactly one thing: its holder was given the
files by whoever ran `babelgate certs`. Keys are ECDSA P-256, written 0600 unless told otherwise.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.models import ExtProcTls

if TYPE_CHECKING:  # cryptography is imported when certificates are made, not by every server process
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

DEFAULT_DAYS = 825
"""The longest validity common TLS clients accept for a leaf certificate."""


@dataclass(frozen=True)
class CertificateFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path
    client_key_file: Path

    def config(self, server_name: str) -> dict[str, str]:
        """The `ext_proc.tls` section naming these files."""
        return {"ca_file": str(self.ca_file), "cert_file": str(self.cert_file), "key_file": str(self.key_file),
                "client_cert_file": str(self.client_cert_file), "client_key_file": str(self.client_key_file),
                "server_name": server_name}


def make_certificates(directory: Path, server_name: str, extra_names: tuple[str, ...] = (),
                      days: int = DEFAULT_DAYS, key_mode: int = 0o600) -> CertificateFiles:
    """Write ca.pem, server.pem, server-key.pem, envoy-client.pem and envoy-client-key.pem into `directory`.

    The CA's own key is not kept: no further certificate can be signed for it, so rotating means running this
    again and handing the new files to both sides."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("Babelgate ext_proc CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(common_name: str, names: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (x509.CertificateBuilder().subject_name(name(common_name)).issuer_name(ca_name)
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(start).not_valid_after(end)
                       .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                       .add_extension(x509.SubjectAlternativeName(names), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                       .sign(ca_key, hashes.SHA256()))
        return _pem_certificate(certificate), _pem_key(key)

    server_names = [_general_name(n) for n in (server_name, *extra_names)]
    server_pem, server_key = leaf(server_name, server_names, ExtendedKeyUsageOID.SERVER_AUTH)
    client_pem, client_key = leaf("envoy", [x509.DNSName("envoy")], ExtendedKeyUsageOID.CLIENT_AUTH)
    directory.mkdir(parents=True, exist_ok=True)
    files = CertificateFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem",
                             directory / "envoy-client.pem", directory / "envoy-client-key.pem")
    _write(files.ca_file, _pem_certificate(ca), 0o644)
    _write(files.cert_file, server_pem, 0o644)
    _write(files.key_file, server_key, key_mode)
    _write(files.client_cert_file, client_pem, 0o644)
    _write(files.client_key_file, client_key, key_mode)
    return files


def server_context(tls: ExtProcTls) -> ssl.SSLContext:
    """The ext_proc server's side: TLS 1.2+, HTTP/2 by ALPN, and a client certificate from the CA required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    context.load_verify_locations(cafile=tls.ca_file)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context


def _general_name(value: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def _pem_certificate(certificate: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return certificate.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Created with its final mode: a private key is never readable by others, not even for a moment."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
