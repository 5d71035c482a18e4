"""Client channels with the same explicit limits, API key and TLS options as the servers."""

from __future__ import annotations

from pathlib import Path

import grpc

from tviz.server import API_KEY_HEADER, message_options

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def aio_channel(
    target: str,
    *,
    tls_ca: Path | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> grpc.aio.Channel:
    options = message_options(max_message_bytes)
    if tls_ca is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
        return grpc.aio.secure_channel(target, creds, options=options)
    return grpc.aio.insecure_channel(target, options=options)


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return ((API_KEY_HEADER, api_key),) if api_key else ()
