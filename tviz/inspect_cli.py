"""`tviz inspect`: one Inspect call, written out as a heatmap, JSON or safetensors.

With `--target` it calls a running inspector; without, it starts one in-process on a free
loopback port, so the CLI and the service always share one code path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import numpy as np
from rich.console import Console
from rich.table import Table

from tviz.client import aio_channel, auth_metadata
from tviz.convert import from_tensor
from tviz.errors import TvizError
from tviz.v1 import inspector_pb2, inspector_pb2_grpc, tensor_pb2


@asynccontextmanager
async def inspector_channel(target: str | None) -> AsyncIterator[grpc.aio.Channel]:
    if target is not None:
        async with aio_channel(target) as ch:
            yield ch
        return
    from inspector.main import build
    from inspector.settings import InspectorSection, InspectorSettings
    from tviz.config import ServerSettings

    settings = InspectorSettings(inspector=InspectorSection(server=ServerSettings(port=0)))
    server = build(settings)
    port = await server.start()
    await server.set_serving(True)
    try:
        async with aio_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(0)


async def _inspect(
    request: inspector_pb2.InspectRequest, target: str | None, api_key: str | None
) -> tuple[inspector_pb2.InspectHeader, list[inspector_pb2.TapTensor]]:
    header, tensors = inspector_pb2.InspectHeader(), []
    async with inspector_channel(target) as ch:
        stub = inspector_pb2_grpc.InspectorStub(ch)
        try:
            async for chunk in stub.Inspect(request, metadata=auth_metadata(api_key)):
                if chunk.HasField("header"):
                    header = chunk.header
                else:
                    tensors.append(chunk.tensor)
        except grpc.aio.AioRpcError as err:
            raise TvizError(f"{err.code().name}: {err.details()}") from None
    return header, tensors


def run_inspect(
    prompt: str,
    layers: list[int],
    heads: list[int],
    taps: list[str],
    png: Path | None,
    json_out: Path | None,
    st_out: Path | None,
    float32: bool,
    target: str | None,
    api_key: str | None,
    out_console: Console,
) -> None:
    dtype = tensor_pb2.DTYPE_FLOAT32 if float32 else tensor_pb2.DTYPE_FLOAT16
    request = inspector_pb2.InspectRequest(
        input=inspector_pb2.ModelInput(prompt=prompt), layers=layers, heads=heads, taps=taps,
        dtype=dtype,
    )  # fmt: skip
    header, tensors = asyncio.run(_inspect(request, target, api_key))
    arrays = {t.name: from_tensor(t.tensor) for t in tensors}
    token_texts = [t.text for t in header.tokens]

    table = Table(title=f"{len(token_texts)} tokens: {token_texts}")
    table.add_column("tap")
    table.add_column("shape")
    table.add_column("min / max")
    for name, arr in arrays.items():
        finite = arr[np.isfinite(arr)]
        span = f"{finite.min():.3g} / {finite.max():.3g}" if finite.size else "-"
        table.add_row(name, str(list(arr.shape)), span)
    out_console.print(table)

    if png is not None:
        from tviz.plots import attention_heatmaps

        patterns = [n for n in arrays if n.endswith(".attn.pattern")]
        if not patterns:
            raise TvizError("--out needs an attention pattern: include the tap 'attn.pattern'")
        first = patterns[0]
        layer = int(first.split(".")[1])
        attention_heatmaps(
            arrays[first].astype(np.float32), token_texts, list(header.query_rows),
            list(header.heads), layer, png,
        )  # fmt: skip
        out_console.print(f"heatmap of {first} → {png}")
    if json_out is not None:
        payload = {
            "tokens": [{"id": t.id, "text": t.text} for t in header.tokens],
            "layers": list(header.layers),
            "heads": list(header.heads),
            "query_rows": list(header.query_rows),
            "weights_digest": header.weights_digest,
            "taps": {
                name: {
                    "shape": list(arr.shape),
                    # JSON has no infinities: masked scores carry null above the diagonal.
                    "data": np.where(np.isfinite(arr), arr.astype(np.float64), np.nan).tolist(),
                }
                for name, arr in arrays.items()
            },
        }
        json_out.write_text(json.dumps(payload).replace("NaN", "null"))
        out_console.print(f"JSON dump → {json_out}")
    if st_out is not None:
        from safetensors.numpy import save_file

        manifest = {
            "taps": list(arrays),
            "tokens": token_texts,
            "token_ids": [t.id for t in header.tokens],
            "heads": list(header.heads),
            "query_rows": list(header.query_rows),
            "weights_digest": header.weights_digest,
        }
        save_file(
            {name: np.ascontiguousarray(a) for name, a in arrays.items()},
            str(st_out),
            metadata={"tviz_manifest": json.dumps(manifest)},
        )
        out_console.print(f"safetensors dump → {st_out}")
