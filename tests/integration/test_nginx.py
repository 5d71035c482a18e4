"""A real NGINX (Debian's) with nginx/ configs in front of real gateways: h2c, TLS, per-RPC balancing."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import free_port
from tests.integration.test_gateway import gateway_settings, started
from tviz import edge
from tviz.client import aio_channel
from tviz.v1 import generation_pb2 as g
from tviz.v1 import generation_pb2_grpc, model_pb2

pytestmark = pytest.mark.integration


def self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_nginx_edge_h2c_tls_and_per_rpc_balancing(
    reference_replica, tmp_path: Path, artifacts: Path
) -> None:  # type: ignore[no-untyped-def]
    if edge.nginx_binary() is None:
        pytest.fail("nginx is missing: scripts/test.sh installs Debian's nginx package")
    gateways = [await started(gateway_settings([reference_replica.target], None)) for _ in range(2)]
    cert, key = self_signed(tmp_path)
    cfg = edge.EdgeConfig(
        gateways=[gw.target for gw in gateways],
        port=free_port(),
        tls_port=free_port(),
        tls_cert=cert,
        tls_key=key,  # type: ignore[attr-defined]
    )
    conf = edge.render(cfg, tmp_path / "nginx")
    edge.check(conf)
    proc = subprocess.Popen(edge.command(conf), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)
        req = g.GenerateRequest(
            chat=g.ChatMessages(
                messages=[g.ChatMessage(role="user", content="What is the capital of France?")]
            ),
            sampling=g.SamplingParams(temperature=0.0, max_tokens=12),
        )
        async with aio_channel(f"127.0.0.1:{cfg.port}") as ch:
            stub = generation_pb2_grpc.GenerationStub(ch)
            text = "".join([c.text async for c in stub.Generate(req)])
            assert "Paris" in text
            # one client channel, many RPCs: NGINX spreads the calls over both gateways
            sampled = g.GenerateRequest(
                prompt="Hi", sampling=g.SamplingParams(temperature=0.8, max_tokens=2)
            )
            before = [gw.servicer.handled for gw in gateways]
            for _ in range(8):
                [c async for c in stub.Generate(sampled)]
            after = [gw.servicer.handled for gw in gateways]
            assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [
                    c
                    async for c in stub.Generate(
                        g.GenerateRequest(prompt="Hi", sampling=g.SamplingParams(top_p=3))
                    )
                ]
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        async with aio_channel(f"localhost:{cfg.tls_port}", tls_ca=cert) as ch:
            stub = generation_pb2_grpc.GenerationStub(ch)
            text = "".join([c.text async for c in stub.Generate(req)])
            assert "Paris" in text
        # a stopped gateway pool → a gRPC status from NGINX, not a hang
        for gw in gateways:
            await gw.stop(0)
        async with aio_channel(f"127.0.0.1:{cfg.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(
                    generation_pb2_grpc.GenerationStub(ch).GetModelInfo(
                        model_pb2.GetModelInfoRequest()
                    ),
                    30,
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        (artifacts / "nginx-error.log").write_bytes(
            (conf.parent / "logs" / "error.log").read_bytes()
        )
