"""common.tls -- TLS contexts for servers and clients, reloadable certificates, STARTTLS.

`ServerTLS(cfg.core.tls)` builds a pyOpenSSL server context from the certificate chain
and key: TLS 1.2 and 1.3 only (1.3 only if `min_version: "1.3"`), the configured TLS 1.2
cipher list, no compression, no renegotiation, the server's cipher preference, ECDHE
with OpenSSL's automatic curve choice. Its `.creator` is one stable object handed to
`transport.startTLS()` and `TLSMemoryBIOFactory`; `.reload()` swaps the context behind
it, so a SIGHUP brings a renewed certificate to every new connection while the
connections already open keep theirs. A reload that fails keeps the old context.

`client_creator(hostname, verify)` is for outbound connections: verified with
service-identity when policy asks, or encrypted without verification for
opportunistic TLS.

An ssl: listener endpoint may name its own certificate and key (`listener_files()`);
the runner builds a ServerTLS for it, reloaded on SIGHUP like the shared one.

STARTTLS: `start_tls(transport, server_tls, core)` is the one way every daemon starts
TLS on a connection. A sans-IO core stops reading at STARTTLS and keeps whatever the
client sent behind it; `start_tls` discards that (`core.discard_input()`), logs how
many bytes it threw away, and starts the handshake. Anything the client pipelined
behind STARTTLS is therefore never executed (the plaintext injection of
CVE-2011-0411). The cores also discard it themselves before reading on, in case a
glue forgets.

SECURITY: the certificate and key files are trusted (the administrator's); the key is
read once per (re)load and kept only inside OpenSSL.
"""

from __future__ import annotations

import dataclasses
import re
import typing
import weakref
from pathlib import Path

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from zope.interface import implementer

from .config.core import TlsFiles
from .config.loader import ConfigError, find_line

log = Logger(namespace="postroom.tls")

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}

#: Every ServerTLS alive in this process; the runner reloads them on SIGHUP.
_INSTANCES: "weakref.WeakSet[ServerTLS]" = weakref.WeakSet()


def _ssl_reason(err: Exception) -> str:
    """OpenSSL's error queue as a short readable reason."""
    if isinstance(err, SSL.Error) and err.args and isinstance(err.args[0], list) and err.args[0]:
        return "; ".join(str(e[-1]) for e in err.args[0])
    return str(err) or type(err).__name__


#: Where a listener's own TLS files are named in its ssl: endpoint string.
_ENDPOINT_OPTION = {"tls.certificate": "certKey", "tls.key": "privateKey"}


class _Problem:
    """Builds the ConfigError for a TLS file: located at the postroom.yaml line that
    names the file when that file is known, at the endpoint string that names it for a
    listener's own files (`where`: file, line, key), else at the TLS file itself."""

    def __init__(self, config_file: str | None, where: tuple | None = None):
        self.config_file = config_file
        self.where = where

    def __call__(self, key: str, path: Path | None, message: str) -> ConfigError:
        if self.where is not None:
            file, line, where_key = self.where
            option = _ENDPOINT_OPTION.get(key)
            text = f"{option}={path}: {message}" if option else f"{key} (postroom.yaml): {message}"
            return ConfigError(file, line, where_key, text)
        if self.config_file is None:
            return ConfigError(path, None, key, message)
        line = find_line(Path(self.config_file), key)
        return ConfigError(self.config_file, line, key, f"{path}: {message}" if path else message)


def _readable(path: Path | None, key: str, problem: _Problem) -> Path:
    if path is None:
        raise problem(key, None, "is required for a TLS listener")
    try:
        with open(path, "rb") as f:
            if not f.read(1):
                raise problem(key, path, "the file is empty")
    except OSError as e:
        raise problem(key, path, f"cannot read: {e.strerror or e}") from None
    return path


def build_server_context(tls: TlsFiles, config_file: str | Path | None = None,
                         where: tuple | None = None) -> SSL.Context:
    """A fresh server context from the files in tls. Raises ConfigError located in
    config_file (postroom.yaml), or at `where` (file, line, key) for a listener's own files."""
    problem = _Problem(str(config_file) if config_file is not None else None, where)
    cert = _readable(tls.certificate, "tls.certificate", problem)
    key = _readable(tls.key, "tls.key", problem)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(_VERSIONS[tls.min_version])
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                    | SSL.OP_NO_RENEGOTIATION | SSL.OP_SINGLE_ECDH_USE)
    # OpenSSL >= 1.1.0 chooses the ECDHE curve automatically (ECDH auto is always on).
    try:
        ctx.set_cipher_list(tls.ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError) as e:
        raise problem("tls.ciphers", None, f"no usable cipher: {_ssl_reason(e)}") from None
    try:
        ctx.use_certificate_chain_file(str(cert).encode())
    except SSL.Error as e:
        raise problem("tls.certificate", cert, f"not a PEM certificate chain: {_ssl_reason(e)}") from None
    try:
        ctx.use_privatekey_file(str(key).encode())
    except SSL.Error as e:
        reason = _ssl_reason(e)
        if "mismatch" in reason:
            raise problem("tls.key", key, f"does not match the certificate {cert}") from None
        raise problem("tls.key", key, f"not a usable PEM private key: {reason}") from None
    try:
        ctx.check_privatekey()
    except SSL.Error:
        raise problem("tls.key", key, f"does not match the certificate {cert}") from None
    ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    ctx.set_session_id(b"postroom")
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    """The stable object listeners hold; the context inside it changes on reload."""

    def __init__(self, ctx: SSL.Context):
        self.context = ctx

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self.context, None)


class ServerTLS:
    """A server TLS context built from certificate and key files, reloadable."""

    def __init__(self, tls: TlsFiles, config_file: str | Path | None = None, where: tuple | None = None):
        self.files = tls
        self.config_file = str(config_file) if config_file is not None else None
        self.where = where
        self.creator = _ServerCreator(build_server_context(tls, self.config_file, where))
        _INSTANCES.add(self)

    @property
    def context(self) -> SSL.Context:
        return self.creator.context

    def reload(self) -> bool:
        """Re-read the files. New connections get the new certificate; on failure the
        old context stays and the error is logged. Returns whether it changed."""
        try:
            ctx = build_server_context(self.files, self.config_file, self.where)
        except ConfigError as e:
            log.error("TLS reload failed, keeping the old certificate: {error}", error=str(e))
            return False
        self.creator.context = ctx
        log.info("TLS certificate reloaded from {path}", path=str(self.files.certificate))
        return True


def all_server_tls() -> list[ServerTLS]:
    """Every ServerTLS alive in this process."""
    return list(_INSTANCES)


def listener_files(listener, defaults: TlsFiles) -> TlsFiles | None:
    """The TLS files of a listener whose ssl: endpoint names its own (privateKey=,
    certKey=), with the other settings (min_version, ciphers) of defaults; None when
    the listener uses postroom.yaml's certificate."""
    endpoint = listener.endpoint
    if getattr(endpoint, "key", None) is None:
        return None
    return dataclasses.replace(defaults, certificate=endpoint.certificate, key=endpoint.key)


class DiscardsInput(typing.Protocol):
    """A sans-IO protocol core that can start TLS: at STARTTLS it answers, stops
    reading, and keeps whatever else the client sent until `discard_input()`."""

    def discard_input(self) -> int:
        """Drop every byte received and not yet acted on; return how many."""


def start_tls(transport, server_tls: ServerTLS, core: DiscardsInput, log=None, **fields) -> int:
    """Begin the server side of STARTTLS: discard everything the client sent after
    the STARTTLS command (CVE-2011-0411: it was sent in clear and must never count as
    a command of the encrypted session), then start the handshake.

    Call it right after the "ready to start TLS" reply was written (the transport
    sends that in clear before the handshake) and before feeding the core anything
    more. The discarded byte count is logged (never the bytes) on log with fields,
    and returned."""
    dropped = core.discard_input()
    if dropped and log is not None:
        log.warn("discarded {n} bytes the client sent after STARTTLS before the TLS handshake",
                 n=dropped, **fields)
    transport.startTLS(server_tls.creator)
    return dropped


def _connection(transport) -> SSL.Connection | None:
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    try:
        handle = get_handle()
    except Exception:
        return None
    return handle if isinstance(handle, SSL.Connection) else None


def tls_started(transport) -> bool:
    """Whether TLS has been started on transport (the handshake may be in progress;
    no application data passes before it completes)."""
    return _connection(transport) is not None


def tls_info(transport) -> tuple[str, str] | None:
    """(protocol version such as "TLSv1.3", cipher name) of an established TLS
    connection, or None when the connection is not (yet) encrypted."""
    conn = _connection(transport)
    if conn is None:
        return None
    cipher = conn.get_cipher_name()
    if not cipher:
        return None
    return conn.get_protocol_version_name(), cipher


# -- outbound ---------------------------------------------------------------

@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientCreator:
    """Encrypts without checking the peer: opportunistic TLS (`may`), where the
    alternative is plain text."""

    def __init__(self, hostname: str | None):
        self.hostname = hostname
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        self.context = ctx

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        conn = SSL.Connection(self.context, None)
        if self.hostname and not _is_ip(self.hostname):
            conn.set_tlsext_host_name(self.hostname.encode("idna"))
        conn.set_connect_state()
        return conn


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _trust_root(ca_file: Path):
    from twisted.internet import ssl as tssl

    pem = Path(ca_file).read_bytes()
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
    if not blocks:
        raise ValueError(f"{ca_file}: no PEM certificate found")
    return tssl.trustRootFromCertificates([tssl.Certificate.loadPEM(b) for b in blocks])


def client_creator(hostname: str | None, verify: bool, ca_file: Path | None = None):
    """A client connection creator for an outbound TLS connection to hostname.

    verify=True checks the certificate chain (against ca_file, else the system's
    roots) and the name with service-identity, TLS 1.2 at least. verify=False
    encrypts without checking anything."""
    if not verify:
        return _UnverifiedClientCreator(hostname)
    from twisted.internet import ssl as tssl

    if not hostname:
        raise ValueError("a verified TLS connection needs the peer's host name")
    trust = _trust_root(ca_file) if ca_file is not None else tssl.platformTrust()
    return tssl.optionsForClientTLS(
        hostname, trustRoot=trust,
        extraCertificateOptions={"raiseMinimumTo": tssl.TLSVersion.TLSv1_2},
    )


def certificate_serial(path: Path) -> int:
    """The serial number of the first certificate in a PEM file (for logs and tests)."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(Path(path).read_bytes()).serial_number
