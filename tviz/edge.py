"""The NGINX edge: render nginx/ templates for given gateways and run NGINX as a child."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NGINX_DIR = Path(__file__).resolve().parent.parent / "nginx"


@dataclass(frozen=True)
class EdgeConfig:
    gateways: list[str]  # host:port
    port: int  # plaintext HTTP/2 (h2c) port
    tls_port: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


def render_site(gateways: list[str], listen: list[str]) -> str:
    """nginx/tviz-edge.conf with its placeholders filled."""
    site = (NGINX_DIR / "tviz-edge.conf").read_text()
    site = site.replace("{{GATEWAY_SERVERS}}", "\n".join(f"    server {g};" for g in gateways))
    return site.replace("{{LISTEN}}", "\n".join(listen))


# The copy Kubernetes mounts (k8s/base/nginx/): the gateway Service, h2c on 8080, TLS on 8443.
K8S_SITE = Path(__file__).resolve().parent.parent / "k8s" / "base" / "nginx" / "tviz-edge.conf"
K8S_GATEWAYS = ["tviz-gateway:50050"]
K8S_LISTEN = [
    "    listen 8080 http2;",
    "    listen 8443 ssl http2;",
    "    ssl_certificate /etc/tviz/tls/tls.crt;",
    "    ssl_certificate_key /etc/tviz/tls/tls.key;",
    "    ssl_protocols TLSv1.2 TLSv1.3;",
]


def render(cfg: EdgeConfig, workdir: Path) -> Path:
    """Write nginx.conf and tviz-edge.conf under `workdir`; returns the nginx.conf path."""
    for sub in ("logs", "tmp"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    listen = [f"    listen 127.0.0.1:{cfg.port} http2;"]
    if cfg.tls_port is not None:
        if cfg.tls_cert is None or cfg.tls_key is None:
            raise ValueError("TLS needs a certificate and a key")
        listen += [
            f"    listen 127.0.0.1:{cfg.tls_port} ssl http2;",
            f"    ssl_certificate {cfg.tls_cert.resolve()};",
            f"    ssl_certificate_key {cfg.tls_key.resolve()};",
            "    ssl_protocols TLSv1.2 TLSv1.3;",
        ]
    (workdir / "tviz-edge.conf").write_text(render_site(cfg.gateways, listen))
    main = (NGINX_DIR / "nginx.conf").read_text().replace("{{SITE_CONF}}", "tviz-edge.conf")
    conf = workdir / "nginx.conf"
    conf.write_text(main)
    return conf


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def command(conf: Path) -> list[str]:
    exe = nginx_binary()
    if exe is None:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx)")
    return [exe, "-p", str(conf.parent), "-c", str(conf), "-g", "daemon off;"]


def check(conf: Path) -> None:
    """`nginx -t` on the rendered configuration; raises with NGINX's message."""
    exe = nginx_binary()
    if exe is None:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx)")
    result = subprocess.run(
        [exe, "-t", "-p", str(conf.parent), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip())


def main() -> None:
    """`python -m tviz.edge`: regenerate the Kubernetes copy of the edge configuration."""
    K8S_SITE.parent.mkdir(parents=True, exist_ok=True)
    K8S_SITE.write_text(render_site(K8S_GATEWAYS, K8S_LISTEN))
    print(f"wrote {K8S_SITE}")


if __name__ == "__main__":
    main()
