"""The cluster's certificates and keys, made once per state directory with `cryptography`.

One CA signs everything, as kubeadm's does: the API server's serving certificate (names and
IPs a client may use: 127.0.0.1, the node bridge, the `kubernetes` Service), a client
certificate per control-plane identity (admin in system:masters, the controller-manager, the
scheduler, the node in system:nodes, the API server's kubelet client), and the service-account
key pair that signs and verifies bound tokens. The identities are the ones Kubernetes' default
RBAC and the Node authorizer know, so authorization works as in any cluster.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365


@dataclass(frozen=True)
class Identity:
    """A client certificate: CN is the user name, O the groups (as the API server reads them)."""

    file: str
    user: str
    groups: tuple[str, ...] = ()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)


def _ca(dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = dir / "ca.crt", dir / "ca.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key
    key = _key()
    name = _name("mlvisor-test-ca")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now()).not_valid_after(_now() + datetime.timedelta(days=VALID_DAYS * 10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert, key


def _issue(dir: Path, file: str, subject: x509.Name, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], *,
           server: bool = False, client: bool = False, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> None:
    if (dir / f"{file}.crt").exists() and (dir / f"{file}.key").exists():
        return
    ca_cert, ca_key = ca
    key = _key()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now()).not_valid_after(_now() + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if dns or ips:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(dir / f"{file}.key", key)
    _write_cert(dir / f"{file}.crt", cert)


def ensure(dir: Path, *, identities: tuple[Identity, ...], server_ips: tuple[str, ...],
           server_names: tuple[str, ...]) -> None:
    """Create whatever is missing under ``dir`` (idempotent: a second call keeps every file)."""
    dir.mkdir(parents=True, exist_ok=True)
    ca = _ca(dir)
    _issue(dir, "apiserver", _name("kube-apiserver"), ca, server=True, dns=server_names, ips=server_ips)
    for ident in identities:
        _issue(dir, ident.file, _name(ident.user, ident.groups), ca, client=True)
    if not (dir / "sa.key").exists():
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(dir / "sa.key", sa)
        (dir / "sa.pub").write_bytes(sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def issue_serving(dir: Path, file: str, cn: str, ips: tuple[str, ...], dns: tuple[str, ...] = ()) -> None:
    """A serving certificate signed by the cluster CA (the node's kubelet endpoint uses one)."""
    _issue(dir, file, _name(cn), _ca(dir), server=True, ips=ips, dns=dns)
