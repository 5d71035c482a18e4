"""The inspector's configuration (TVIZ_INSPECTOR__*)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from tviz.config import CommonSettings, ServerSettings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebSettings(BaseModel):
    """The web visualizer served beside the inspector (off unless a port is set)."""

    port: int | None = Field(default=None, ge=0, le=65535, description="HTTP port; unset = off.")
    host: str = "127.0.0.1"
    gateway: str = Field(default="127.0.0.1:50050", description="Gateway for the Generate panel.")
    api_key: str | None = Field(
        default=None, description="Key the page's server sends to the inspector and gateway."
    )


class InspectorSection(BaseModel):
    server: ServerSettings = Field(default_factory=lambda: ServerSettings(port=50061))
    max_tokens: int = Field(default=1024, ge=1, description="Longest input, in tokens.")
    max_concurrency: int = Field(default=1, ge=1, le=64, description="Model jobs run at once.")
    max_queue: int = Field(default=8, ge=0, description="Jobs that may wait; more are refused.")
    dtype: Literal["float32", "bfloat16"] = "float32"
    threads: int | None = Field(default=None, ge=1, description="torch threads (default: all).")
    web: WebSettings = Field(default_factory=WebSettings)
    allow_anonymous_remote: bool = Field(
        default=False,
        description="Serve tensor dumps on a non-loopback address without API keys.",
    )

    @model_validator(mode="after")
    def _dumps_not_open_by_default(self) -> InspectorSection:
        s = self.server
        for what, host in (("server.host", s.host), ("web.host", self.web.host)):
            if not _is_loopback(host) and not s.api_key_hashes and not self.allow_anonymous_remote:
                raise ValueError(
                    f"inspector.{what} {host!r} is reachable from other machines: configure "
                    "inspector.server.api_key_hashes, or set inspector.allow_anonymous_remote=true"
                )
        return self


class InspectorSettings(CommonSettings):
    inspector: InspectorSection = Field(default_factory=InspectorSection)
