"""A source's ``tls`` and ``auth`` as the Kafka clients take them (aiokafka, faust)."""

from __future__ import annotations

import ssl
from typing import Any

from spanmetrics.config.model import SourceConfig, TLSConfig


def ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """The TLS settings as a client context.

    Raises:
        OSError, ssl.SSLError: a certificate or key that cannot be loaded.
    """
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def uses_tls(source: SourceConfig) -> bool:
    """Whether the brokers are spoken to over TLS."""
    return source.tls is not None and not source.tls.insecure


def client_options(source: SourceConfig) -> dict[str, Any]:
    """Keyword arguments of aiokafka's clients (producer, consumer, admin)."""
    tls = uses_tls(source)
    sasl = source.auth.sasl if source.auth is not None else None
    options: dict[str, Any] = {
        "security_protocol": ("SASL_SSL" if tls else "SASL_PLAINTEXT")
        if sasl
        else ("SSL" if tls else "PLAINTEXT")
    }
    if tls:
        assert source.tls is not None
        options["ssl_context"] = ssl_context(source.tls)
    if sasl is not None:
        options |= {
            "sasl_mechanism": sasl.mechanism,
            "sasl_plain_username": sasl.username,
            "sasl_plain_password": sasl.password,
        }
    return options


def faust_credentials(source: SourceConfig) -> Any:
    """faust's ``broker_credentials`` (None for plaintext without SASL)."""
    import faust

    sasl = source.auth.sasl if source.auth is not None else None
    context = ssl_context(source.tls) if uses_tls(source) and source.tls else None
    if sasl is not None:
        return faust.SASLCredentials(
            username=sasl.username, password=sasl.password, ssl_context=context,
            mechanism=sasl.mechanism,
        )  # fmt: skip
    if context is not None:
        return faust.SSLCredentials(context)
    return None
