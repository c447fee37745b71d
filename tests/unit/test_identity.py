"""The certificates of mutual TLS between partitions (``nodes/rpc/identity.py``), without
sockets: what a run's CA issues, what a user's CA must be to be loaded, the checks on where a
server may listen, and the ray config's TLS options."""

from __future__ import annotations

import datetime
import os
import pickle

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cluster.ray_backend import RayConfig
from nodes import errors
from nodes.rpc.identity import ClusterCA, IdentityError, check_name
from nodes.rpc.server import check_bind_host
from nodes.rpc.status import error_from


def _write(path, data: bytes, mode: int) -> str:
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


def _rsa_ca(*, ca: bool = True) -> tuple[bytes, bytes]:
    """A user's CA as another tool would make it: RSA, no key identifiers; or (``ca=False``)
    a certificate that is not a CA's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "user CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_a_partition_certificate_names_the_partition_and_is_issued_by_the_run_ca():
    ca = ClusterCA.generate()
    ident = ca.issue("p3")
    cert = x509.load_pem_x509_certificate(ident.cert_pem)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cert.verify_directly_issued_by(ca_cert)  # raises unless the CA signed it
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "p3"
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["p3"]
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.not_valid_after_utc <= ca_cert.not_valid_after_utc
    key = serialization.load_pem_private_key(ident.key_pem, password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert ident.ca_pem == ca.cert_pem
    # each partition its own key; another run, another CA
    assert ca.issue("p4").key_pem != ident.key_pem
    assert ClusterCA.generate().cert_pem != ca.cert_pem
    assert set(ca.issue_all(["p0", "p1"])) == {"p0", "p1"}


def test_an_identity_pickles_and_never_shows_a_key():
    ca = ClusterCA.generate()
    ident = ca.issue("p0")
    assert pickle.loads(pickle.dumps(ident)) == ident  # what Ray does with it
    for shown in (repr(ident), str(ident), repr(ca)):
        assert "PRIVATE KEY" not in shown
    assert "p0" in repr(ident)
    assert isinstance(ident.server_credentials(), grpc.ServerCredentials)
    assert isinstance(ident.channel_credentials(), grpc.ChannelCredentials)
    assert ident.target_name("p5") == (("grpc.ssl_target_name_override", "p5"),)


@pytest.mark.parametrize("name", ["", "p 0", "p0.example", "-p0", "p0-", "x" * 64, "p/0", 7, None])
def test_a_name_that_cannot_be_a_certificates_dns_name_is_refused(name):
    with pytest.raises(IdentityError, match="one DNS label"):
        check_name(name)
    with pytest.raises(IdentityError, match=repr(name).replace("(", r"\(")[:20]):
        ClusterCA.generate().issue(name)  # type: ignore[arg-type]


def test_a_users_ca_is_loaded_from_its_files_and_issues(tmp_path):
    cert_pem, key_pem = _rsa_ca()
    ca = ClusterCA.load(_write(tmp_path / "ca.pem", cert_pem, 0o644), _write(tmp_path / "ca.key", key_pem, 0o600))
    ident = ca.issue("p0")
    x509.load_pem_x509_certificate(ident.cert_pem).verify_directly_issued_by(x509.load_pem_x509_certificate(cert_pem))
    assert ident.ca_pem == x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.PEM)
    made = ClusterCA.generate()  # and one of ours, written out and read back
    again = ClusterCA.load(_write(tmp_path / "m.pem", made.cert_pem, 0o600), _write(tmp_path / "m.key", made.key_pem, 0o400))
    assert again == made


def test_a_users_ca_that_cannot_be_used_is_refused_naming_the_file(tmp_path):
    cert_pem, key_pem = _rsa_ca()
    cert = _write(tmp_path / "ca.pem", cert_pem, 0o644)
    key = _write(tmp_path / "ca.key", key_pem, 0o600)
    with pytest.raises(IdentityError, match=r"open\.key' is accessible by others \(mode 0644\).*chmod 600"):
        ClusterCA.load(cert, _write(tmp_path / "open.key", key_pem, 0o644))
    with pytest.raises(IdentityError, match=r"mode 0640"):
        ClusterCA.load(cert, _write(tmp_path / "group.key", key_pem, 0o640))
    with pytest.raises(IdentityError, match=r"missing\.key' cannot be read"):
        ClusterCA.load(cert, str(tmp_path / "missing.key"))
    other_cert, other_key = _rsa_ca()
    with pytest.raises(IdentityError, match=r"other\.key' does not match CA certificate"):
        ClusterCA.load(cert, _write(tmp_path / "other.key", other_key, 0o600))
    leaf_cert, leaf_key = _rsa_ca(ca=False)
    with pytest.raises(IdentityError, match=r"leaf\.pem' is not a CA's"):
        ClusterCA.load(_write(tmp_path / "leaf.pem", leaf_cert, 0o644), _write(tmp_path / "leaf.key", leaf_key, 0o600))
    with pytest.raises(IdentityError, match=r"junk\.pem' is not a PEM certificate"):
        ClusterCA.load(_write(tmp_path / "junk.pem", b"not a certificate", 0o644), key)
    k = serialization.load_pem_private_key(key_pem, password=None)
    locked = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(IdentityError, match=r"locked\.key' is encrypted"):
        ClusterCA.load(cert, _write(tmp_path / "locked.key", locked, 0o600))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "", "*"])
def test_no_server_listens_on_a_wildcard_address(host):
    for secure in (True, False):
        with pytest.raises(ValueError, match="its node's own address, not on every interface"):
            check_bind_host(host, secure=secure)


def test_only_a_server_with_tls_listens_off_loopback():
    for host in ("127.0.0.1", "127.0.0.3", "localhost", "::1", "[::1]"):
        check_bind_host(host, secure=False)
    for host in ("10.77.0.1", "192.0.2.1", "node-1.example", "2001:db8::1"):
        check_bind_host(host, secure=True)
        with pytest.raises(ValueError, match=f"loopback address only, not {host!r}"):
            check_bind_host(host, secure=False)


def test_a_caller_without_a_certificate_is_permission_denied_in_the_model():
    e = error_from(grpc.StatusCode.UNAUTHENTICATED, "no certificate", None, "Exit from p1 to p0")
    assert type(e) is errors.PermissionDenied and "UNAUTHENTICATED" in str(e)


def test_the_ray_configs_tls_options(tmp_path):
    assert RayConfig().tls is True  # on unless turned off
    assert RayConfig().certificate_authority() is not None
    assert RayConfig(tls=False).certificate_authority() is None
    cert_pem, key_pem = _rsa_ca()
    cert, key = _write(tmp_path / "ca.pem", cert_pem, 0o644), _write(tmp_path / "ca.key", key_pem, 0o600)
    loaded = RayConfig(tls_ca_cert=cert, tls_ca_key=key).certificate_authority()
    assert loaded is not None and loaded.cert_pem == x509.load_pem_x509_certificate(cert_pem).public_bytes(
        serialization.Encoding.PEM)
    for kw, message in [
        (dict(tls="no"), "ray config tls: expected true or false, got 'no'"),
        (dict(tls=0), "ray config tls: expected true or false, got 0"),
        (dict(tls_ca_cert=cert), "tls_ca_cert/tls_ca_key: expected both"),
        (dict(tls_ca_key=key), "tls_ca_cert/tls_ca_key: expected both"),
        (dict(tls=False, tls_ca_cert=cert, tls_ca_key=key), "ray config tls: expected true when a CA is given"),
        (dict(tls_ca_cert="", tls_ca_key=key), "ray config tls_ca_cert: expected None or the path of a PEM file"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            RayConfig(**kw)


def test_the_command_lines_tls_options_apply_to_ray_and_a_bad_ca_fails_before_ray(tmp_path, capsys):
    from workloads.cli import main

    assert main(["run", "quickstart", "--no-tls"]) == 2
    assert capsys.readouterr().err == "mmusim: --no-tls: an option of --backend ray only\n"
    missing, key = tmp_path / "missing.pem", tmp_path / "ca.key"
    assert main(["sweep", "quickstart", "--vary", "srcu.scope=global", "--tls-ca", str(missing), str(key)]) == 2
    assert capsys.readouterr().err == "mmusim: --tls-ca: an option of --backend ray only\n"
    # the CA is loaded before Ray is started or joined: one line, at once
    assert main(["run", "quickstart", "--backend", "ray", "--tls-ca", str(missing), str(key)]) == 2
    assert capsys.readouterr().err == f"mmusim: CA certificate '{missing}' cannot be read: No such file or directory\n"
    with pytest.raises(SystemExit) as e:
        main(["run", "quickstart", "--backend", "ray", "--no-tls", "--tls-ca", str(missing), str(key)])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
