"""Self-signed TLS certificates and SuperNode keys for trying a deployment out.

`make_certs` writes what a SuperLink and its SuperNodes need, with ``cryptography``:

- ``ca.crt`` / ``ca.key``: a private certificate authority (the clients' ``--root-certificates``);
- ``server.crt`` / ``server.key``: the SuperLink's certificate, signed by the CA, valid for the
  given host names and IP addresses (Flower checks them: the SuperNodes and the ServerApp
  process reach the SuperLink by one of these names);
- ``client<k>.key`` / ``client<k>.pub``: each SuperNode's authentication key pair (EC P-384,
  OpenSSH format, as ``flower-supernode --auth-supernode-private-key`` and
  ``flwr supernode register`` read them).

Flower 1.41 has no TLS client certificates (no mutual TLS): a SuperNode proves who it is with
its key pair, whose public half the SuperLink has registered. Private keys are written 0600.
For production use certificates from your own PKI; these are for loopback and trials.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
"""Names the server certificate is valid for when none are given: loopback only."""

VALID_DAYS = 365


@dataclass(frozen=True)
class CertPaths:
    """Where `make_certs` wrote each file."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_keys: tuple[Path, ...]
    client_public_keys: tuple[Path, ...]


def make_certs(
    directory: str | Path, *, hosts: Sequence[str] = DEFAULT_HOSTS, clients: int = 2
) -> CertPaths:
    """A CA, a server certificate for ``hosts`` and ``clients`` SuperNode key pairs in
    ``directory`` (created; existing files are overwritten)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = _ca_certificate(ca_key)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = _server_certificate(server_key, ca_cert, ca_key, hosts)
    _write(root / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(root / "ca.key", _pem_key(ca_key), private=True)
    _write(root / "server.crt", server_cert.public_bytes(serialization.Encoding.PEM))
    _write(root / "server.key", _pem_key(server_key), private=True)
    keys, public = [], []
    for k in range(clients):
        private_path, public_path = make_node_keys(root / f"client{k}")
        keys.append(private_path)
        public.append(public_path)
    return CertPaths(
        root / "ca.crt", root / "server.crt", root / "server.key", tuple(keys), tuple(public)
    )


def make_node_keys(stem: str | Path) -> tuple[Path, Path]:
    """A SuperNode's authentication key pair: ``<stem>.key`` (0600) and ``<stem>.pub``."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    stem = Path(stem)
    private_path, public_path = stem.with_suffix(".key"), stem.with_suffix(".pub")
    _write(private_path, private, private=True)
    _write(public_path, public + b"\n")
    return private_path, public_path


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedkt trial CA")])
    return (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hosts: Sequence[str],
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "")])
    return (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clock skew
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
    )


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """IP addresses as IP entries (TLS checks them so), everything else as DNS names."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data``; a private key is created 0600 from the start (never readable by others,
    not even for a moment)."""
    path.unlink(missing_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
