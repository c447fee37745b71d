"""Who a partition is, on the wire: the certificates of mutual TLS between partitions.

A run has one certificate authority (``ClusterCA``): made fresh at bring-up (``generate``), or
the user's own (``load``, from a certificate and a key file). The CA issues each partition a
key and a certificate naming it (``issue``): the partition's name is the certificate's common
name and its one subject alternative name (a DNS name), and the certificate is good for both
ends of a connection, server and client. What a partition holds is its ``PartitionIdentity``:
its name, its key and certificate, and the CA's certificate; never the CA's key, which stays
with whoever issues (the driver of a run). Everything is PEM bytes in memory, so an identity is
handed to a partition's process as an argument (through Ray) and never written to a file.

Both ends check: the client verifies that the server's certificate names the partition it
meant to call (``target_name``: the channel's expected name is the destination's, whatever
address it dials), the server requires a client certificate of the same CA and checks that it
names the partition the request claims to come from (``nodes/rpc/server.py``).

Keys are ECDSA P-256: quick to make (a run makes one per partition) and to handshake with.
"""

from __future__ import annotations

import datetime
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=30)  # of a CA made for one run: runs last hours, not weeks
CERT_VALIDITY = datetime.timedelta(days=30)  # of a partition's certificate (cut to its CA's end)
CLOCK_SKEW = datetime.timedelta(minutes=5)  # certificates are valid from this long before issue
# a partition name must be usable as a DNS name in a certificate: one label, letters, digits, - and _
_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


class IdentityError(ValueError):
    """A CA or an identity that cannot be used: a bad name, an unreadable or unprotected key
    file, a certificate that is not a CA's or does not match its key."""


def check_name(name: Any) -> str:
    """``name`` if it can name a partition in a certificate; else ``IdentityError``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise IdentityError(f"a partition name in a certificate must be one DNS label (letters, digits, "
                            f"'-', '_'; at most 63), got {name!r}")
    return name


@dataclass(frozen=True)
class PartitionIdentity:
    """What one partition needs for mutual TLS: its name, its key and certificate (PEM), and
    the certificate of the CA that issued it and every other partition's. Plain bytes, so it
    pickles (Ray hands it to a partition's actor); ``repr`` never shows the key."""

    name: str
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    ca_pem: bytes = field(repr=False)

    def server_credentials(self) -> grpc.ServerCredentials:
        """A server's credentials: this certificate, and a client certificate of the same CA
        required of every caller (a TLS handshake without one fails)."""
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)], root_certificates=self.ca_pem,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """A client's credentials: the CA to verify servers by, and this certificate to show."""
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem, private_key=self.key_pem,
                                            certificate_chain=self.cert_pem)

    @staticmethod
    def target_name(dst: str) -> tuple[tuple[str, str], ...]:
        """Channel options that make a client accept only a server whose certificate names
        partition ``dst``, whatever address it dials."""
        return (("grpc.ssl_target_name_override", dst),)


@dataclass(frozen=True)
class ClusterCA:
    """The certificate authority of one run: its certificate and key (PEM). ``repr`` never
    shows the key."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @classmethod
    def generate(cls, common_name: str = "mmusim run CA") -> "ClusterCA":
        """A new self-signed CA for one run, valid for ``CA_VALIDITY``."""

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(_cert_pem(cert), _key_pem(key))

    @classmethod
    def load(cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> "ClusterCA":
        """The user's own CA, from a PEM certificate and an unencrypted PEM key. The key file
        must be readable by its owner only (like ssh's private keys); the certificate must be a
        CA's (basic constraints CA:TRUE), valid now, and match the key."""

        cert_bytes = _read(cert_path, "CA certificate")
        key_bytes = _read(key_path, "CA key", private=True)
        try:
            cert = x509.load_pem_x509_certificate(cert_bytes)
        except ValueError as e:
            raise IdentityError(f"CA certificate {os.fspath(cert_path)!r} is not a PEM certificate: {e}") from None
        try:
            key = serialization.load_pem_private_key(key_bytes, password=None)
        except TypeError:
            raise IdentityError(f"CA key {os.fspath(key_path)!r} is encrypted; give an unencrypted key "
                                f"(in a file only its owner can read)") from None
        except ValueError as e:
            raise IdentityError(f"CA key {os.fspath(key_path)!r} is not a PEM private key: {e}") from None
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise IdentityError(f"CA certificate {os.fspath(cert_path)!r} is not a CA's "
                                f"(it lacks basic constraints CA:TRUE): {cert.subject.rfc4514_string()}")
        now = datetime.datetime.now(datetime.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise IdentityError(f"CA certificate {os.fspath(cert_path)!r} is not valid now: valid from "
                                f"{cert.not_valid_before_utc} to {cert.not_valid_after_utc}")
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if (key.public_key().public_bytes(serialization.Encoding.DER, spki)
                != cert.public_key().public_bytes(serialization.Encoding.DER, spki)):
            raise IdentityError(f"CA key {os.fspath(key_path)!r} does not match CA certificate "
                                f"{os.fspath(cert_path)!r}")
        return cls(_cert_pem(cert), _key_pem(key))

    def issue(self, partition: str) -> PartitionIdentity:
        """A new key and certificate for ``partition``, its name as common name and as the one
        subject alternative name, for server and client authentication."""

        check_name(partition)
        ca_cert = x509.load_pem_x509_certificate(self.cert_pem)
        ca_key = serialization.load_pem_private_key(self.key_pem, password=None)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        not_after = min(now + CERT_VALIDITY, ca_cert.not_valid_after_utc)
        try:
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())  # type: ignore[arg-type]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, partition)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(max(now - CLOCK_SKEW, ca_cert.not_valid_before_utc)).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(partition)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(aki, critical=False)
            .sign(ca_key, None if isinstance(ca_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey))  # type: ignore[arg-type]
                  else hashes.SHA256())
        )
        return PartitionIdentity(partition, _cert_pem(cert), _key_pem(key), self.cert_pem)

    def issue_all(self, partitions: list[str]) -> dict[str, PartitionIdentity]:
        """``issue`` for each of ``partitions``, by name."""
        return {p: self.issue(p) for p in partitions}


def _cert_pem(cert: Any) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _read(path: str | os.PathLike[str], what: str, *, private: bool = False) -> bytes:
    """The bytes of ``path``; a private file must be readable by its owner only."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        if private and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(f"{what} {os.fspath(path)!r} is accessible by others (mode {stat.S_IMODE(mode):04o}); "
                                f"make it readable by its owner only (chmod 600)")
        return p.read_bytes()
    except OSError as e:
        raise IdentityError(f"{what} {os.fspath(path)!r} cannot be read: {e.strerror}") from None
