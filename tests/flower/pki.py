"""Throwaway TLS certificates and SuperNode keys for the secured loopback tests (``cryptography``).

What Flower 1.42 takes: a CA certificate (PEM) that the SuperNodes and the ``flwr`` CLI trust
(``--root-certificates``; ``root-certificates`` in the ``flwr`` connection, an absolute path), a
SuperLink certificate signed by it for the address the nodes dial (here 127.0.0.1, as a subject
alternative name) with its private key (PEM), and per SuperNode an EC key on a NIST curve in
OpenSSH format (private: ``--auth-supernode-private-key``; public: ``flwr supernode register``).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Certs:
    """Paths of the files :func:`make_certs` wrote (all absolute)."""

    ca: Path  # CA certificate (PEM)
    server_cert: Path  # SuperLink certificate for 127.0.0.1 (PEM)
    server_key: Path  # its private key (PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_certs(folder: Path, host: str = "127.0.0.1", days: int = 1) -> Certs:
    """A CA and a SuperLink certificate for ``host`` (an IP address), valid ``days`` days, as
    ``ca.crt``, ``server.pem`` and ``server.key`` in ``folder`` (created)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(_name("fedgmi test CA")).issuer_name(_name("fedgmi test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    out = Certs(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, out.server_key)
    return out


def make_node_key(path: Path) -> Path:
    """A SuperNode key (EC, NIST P-384, OpenSSH format): the private key at ``path``, the public
    one at ``path`` + ``.pub`` (as ``ssh-keygen -t ecdsa -b 384`` writes them); returns ``path``."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    path.with_name(path.name + ".pub").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return path
