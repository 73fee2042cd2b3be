"""A throwaway certificate authority and certificates signed by it, made with openssl."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_ALT_NAMES = "subjectAltName=IP:127.0.0.1,DNS:localhost"
# Python 3.13 verifies with VERIFY_X509_STRICT: a CA needs key usage and a subject key id,
# an issued certificate an authority key id.
_CA_EXTENSIONS = ("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                  "-addext", "subjectKeyIdentifier=hash")
_LEAF_EXTENSIONS = "authorityKeyIdentifier=keyid,issuer\nkeyUsage=critical,digitalSignature\n" \
                   "extendedKeyUsage=serverAuth,clientAuth\n"


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path


class ThrowawayCA:
    """A CA in `root` valid for two days; `issue(name)` signs a certificate for 127.0.0.1."""

    def __init__(self, root: Path, name: str = "throwaway-ca") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cert_file = self.root / f"{name}.crt"
        self.key_file = self.root / f"{name}.key"
        _openssl("req", "-x509", *_KEY, "-days", "2", "-subj", f"/CN={name}", *_CA_EXTENSIONS,
                 "-keyout", str(self.key_file), "-out", str(self.cert_file))

    def issue(self, name: str) -> Certificate:
        key, csr, cert = (self.root / f"{name}{suffix}" for suffix in (".key", ".csr", ".crt"))
        _openssl("req", *_KEY, "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
        extensions = self.root / f"{name}.ext"
        extensions.write_text(_ALT_NAMES + "\n" + _LEAF_EXTENSIONS)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert_file), "-CAkey", str(self.key_file),
                 "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(cert))
        return Certificate(cert, key)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def tls_server_args(ca: ThrowawayCA, server: Certificate, tls_port: int, auth_clients: str = "yes") -> tuple[str, ...]:
    """redis-server arguments for TLS on `tls_port` (beside its plain port, kept for set-up)."""
    return ("--tls-port", str(tls_port), "--tls-cert-file", str(server.cert_file),
            "--tls-key-file", str(server.key_file), "--tls-ca-cert-file", str(ca.cert_file),
            "--tls-auth-clients", auth_clients)


@dataclass(frozen=True)
class TopologyTls:
    """TLS everywhere: servers, replication and Sentinels use certificates of one CA."""

    ca: ThrowawayCA
    cert: Certificate

    def server_args(self, tls_port: int) -> tuple[str, ...]:
        return (*tls_server_args(self.ca, self.cert, tls_port), "--tls-replication", "yes")

    def client_kwargs(self) -> dict[str, Any]:
        return {"ssl": True, "ssl_ca_certs": str(self.ca.cert_file), "ssl_certfile": str(self.cert.cert_file),
                "ssl_keyfile": str(self.cert.key_file)}
