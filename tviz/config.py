"""Configuration: one pydantic-settings class per service, built once in main() and passed down.

Every setting comes from the environment with the `TVIZ_` prefix and `__` between nested
sections, e.g. `TVIZ_MODEL__PATH=/models/llama`, `TVIZ_INSPECTOR__SERVER__PORT=50061`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "tviz" / "models"


class ModelSettings(BaseModel):
    """Which weights to load. Every service reads the same directory."""

    path: Path | None = Field(
        default=None,
        description="An HF-layout Llama-family directory; unset means the converted default model.",
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir, description="Where fetch converts to."
    )
    name: str = Field(default=DEFAULT_MODEL_NAME, description="Name reported by the services.")
    verify: bool = Field(default=True, description="Check weight-file sha256 against the manifest.")

    @property
    def directory(self) -> Path:
        return (self.path or self.cache_dir / DEFAULT_MODEL_NAME).expanduser()

    @property
    def display_name(self) -> str:
        return self.path.name if self.path is not None else self.name


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(default=False, description="One JSON object per line (for k8s).")


class ServerSettings(BaseModel):
    """Transport settings shared by every gRPC service."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port.")
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    grace_seconds: float = Field(default=10.0, ge=0, description="Drain time on SIGTERM.")
    api_key_hashes: list[str] = Field(
        default_factory=list,
        description="sha256 hex digests of accepted API keys; empty means no key required.",
    )
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Prometheus /metrics HTTP port; unset = off."
    )

    @field_validator("api_key_hashes")
    @classmethod
    def _hex_digests(cls, v: list[str]) -> list[str]:
        for h in v:
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h.lower()):
                raise ValueError("api_key_hashes must be sha256 hex digests (64 hex characters)")
        return [h.lower() for h in v]

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        return self


def hash_api_key(key: str) -> str:
    """The form in which API keys appear in configuration."""
    return hashlib.sha256(key.encode()).hexdigest()


class CommonSettings(BaseSettings):
    """Sections every service has. Services subclass this and add their own section."""

    model_config = SettingsConfigDict(
        env_prefix="TVIZ_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    model: ModelSettings = Field(default_factory=ModelSettings)
    log: LogSettings = Field(default_factory=LogSettings)
