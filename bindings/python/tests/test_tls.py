"""TLS from Python: ``Cache(rediss://…, ca_file=…, client_cert_file=…,
client_key_file=…)`` against a throwaway ``redis-server --tls-port`` that
requires client certificates, with certificates from a throwaway CA made
with the openssl command line."""

import shutil
import ssl
import socket
import subprocess

import pytest

from smartcache import Cache, Dep, InvalidTlsFile, RedisUnavailable

from .conftest import free_port, wait_until


def openssl(cwd, *args):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(cwd, name, san):
    openssl(cwd, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
    ext = cwd / f"{name}.ext"
    ext.write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n"
                   + (f"subjectAltName={san}\n" if san else ""))
    openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.crt")


@pytest.fixture
def tls_redis(tmp_path):
    """A TLS-only redis-server requiring client certificates; yields
    (url, ca, client cert, client key)."""
    if shutil.which("openssl") is None or shutil.which("redis-server") is None:
        pytest.fail("openssl and redis-server are needed (Debian packages openssl, redis-server)")
    openssl(tmp_path, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=py test ca", "-keyout", "ca.key", "-out", "ca.crt",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    issue(tmp_path, "server", "IP:127.0.0.1,DNS:localhost")
    issue(tmp_path, "client", "")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "yes",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        cwd=tmp_path, stdout=subprocess.DEVNULL,
    )
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    context.load_cert_chain(str(tmp_path / "client.crt"), str(tmp_path / "client.key"))

    def answers():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_until(answers, what="the TLS redis-server answering")
        yield (f"rediss://127.0.0.1:{port}/0", str(tmp_path / "ca.crt"),
               str(tmp_path / "client.crt"), str(tmp_path / "client.key"))
    finally:
        process.terminate()
        process.wait(10)


def test_a_cache_over_tls_with_a_client_certificate(tls_redis):
    url, ca, cert, key = tls_redis
    cache = Cache(url, namespace="py_tls", ca_file=ca, client_cert_file=cert, client_key_file=key)
    assert cache.get_or_compute("answer", [Dep.table("answers")], lambda: 42) == 42
    assert cache.get("answer") == 42
    cache.clear_all()


def test_a_missing_client_certificate_is_named(tls_redis):
    url, ca, _, _ = tls_redis
    with pytest.raises(RedisUnavailable, match="requires a client certificate"):
        Cache(url, namespace="py_tls", ca_file=ca)


def test_unusable_tls_files_are_refused(tmp_path):
    with pytest.raises(InvalidTlsFile, match="cannot read"):
        Cache("rediss://127.0.0.1:1/0", ca_file=str(tmp_path / "missing.pem"), lazy=True)
    with pytest.raises(ValueError, match="client_key_file"):
        Cache("rediss://127.0.0.1:1/0", client_cert_file=str(tmp_path / "c.pem"), lazy=True)
