"""The web visualizer in the system Chromium, driven by Playwright; screenshots are saved."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_port
from tests.integration.test_gateway import gateway_settings, started
from tviz.client import aio_channel
from tviz.convert import from_tensor
from tviz.v1 import inspector_pb2, inspector_pb2_grpc, tensor_pb2

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update",
]  # fmt: skip
BANK = "The bank of the river flooded"


@pytest.fixture(scope="module")
async def web_url(inspector_target: str, vllm_replica) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    from inspector.web.server import WebApp, start_web

    gw = await started(gateway_settings([vllm_replica.target], None))
    port = free_port()
    runner = await start_web(WebApp(inspector_target, gw.target), "127.0.0.1", port)  # type: ignore[attr-defined]
    yield f"http://127.0.0.1:{port}/"
    await runner.cleanup()
    await gw.stop(0)


@pytest.fixture
async def page(web_url: str):  # type: ignore[no-untyped-def]
    from playwright.async_api import async_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: scripts/test.sh installs Debian's chromium package")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        await page.goto(web_url)
        yield page
        await browser.close()


async def inspector_pattern(target: str, layer: int, head: int) -> np.ndarray:
    async with aio_channel(target) as ch:
        stub = inspector_pb2_grpc.InspectorStub(ch)
        req = inspector_pb2.InspectRequest(
            input=inspector_pb2.ModelInput(prompt=BANK), layers=[layer], heads=[head],
            taps=["attn.pattern"], dtype=tensor_pb2.DTYPE_FLOAT32,
        )  # fmt: skip
        async for chunk in stub.Inspect(req):
            if chunk.HasField("tensor"):
                return from_tensor(chunk.tensor.tensor)[0]
    raise AssertionError("no tensor")


async def test_heatmap_labels_and_hovered_value(
    page, inspector_target: str, artifacts: Path
) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_function("document.querySelectorAll('#tokens .token').length === 6")
    tokens = await page.locator("#tokens .token").all_text_contents()
    assert tokens == ["The", " bank", " of", " the", " river", " flooded"]
    assert await page.locator("#attention-map .xlabel").all_text_contents() == tokens
    assert await page.locator("#attention-map .ylabel").all_text_contents() == tokens

    await page.select_option("#layer", "5")
    await page.select_option("#head", "2")
    await page.wait_for_function(
        "document.querySelector('#attention-map .title').textContent.includes('layer 5 · head 2')"
    )
    canvas = page.locator("#attention-map canvas").first
    box = await canvas.bounding_box()
    cell = float(await canvas.get_attribute("data-cell"))
    expected = await inspector_pattern(inspector_target, 5, 2)
    for row, col in ((3, 1), (5, 0), (5, 5)):
        await page.mouse.move(box["x"] + (col + 0.5) * cell, box["y"] + (row + 0.5) * cell)
        tip = page.locator("#tooltip")
        await page.wait_for_function(
            f"document.getElementById('tooltip').dataset.row === '{row}' && document.getElementById('tooltip').dataset.col === '{col}'"
        )
        value = float(await tip.get_attribute("data-value"))
        assert value == pytest.approx(float(expected[row, col]), abs=1e-6)
        assert tokens[row].strip() in (await tip.text_content())
    await page.locator("#tokens .token").nth(1).click()
    assert await page.locator("#attention-map .xlabel.hl").all_text_contents() == [" bank"]
    await page.screenshot(path=str(artifacts / "web-attention.png"))


async def test_head_grid_overview_and_qk(page, artifacts: Path) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_function("document.querySelectorAll('#tokens .token').length === 6")
    await page.click("#tabs button[data-tab=heads]")
    assert await page.locator("#head-grid .head-cell").count() == 9
    assert await page.locator("#head-grid .kv-group").count() == 3
    assert await page.locator("#head-grid .kv-group").nth(1).locator(".head-cell").count() == 3
    await page.screenshot(path=str(artifacts / "web-heads.png"))
    await page.click("#tabs button[data-tab=qk]")
    assert await page.locator("#qk-maps .heatmap").count() == 3
    await page.screenshot(path=str(artifacts / "web-qk.png"))
    await page.click("#tabs button[data-tab=overview]")
    await page.wait_for_selector("#overview-map canvas")
    assert await page.locator("#overview-map .ylabel").count() == 30
    await page.screenshot(path=str(artifacts / "web-overview.png"))


async def test_positional_encodings_and_profiler(page, artifacts: Path) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_function("document.querySelectorAll('#tokens .token').length === 6")
    await page.click("#tabs button[data-tab=pe]")
    await page.wait_for_function("document.querySelectorAll('#pe-maps .heatmap').length === 4")
    assert await page.locator("#pe-maps svg rect").count() == 32  # head_dim / 2 RoPE frequencies
    await page.screenshot(path=str(artifacts / "web-pe.png"))
    await page.click("#tabs button[data-tab=profile]")
    await page.click("#profile-run")
    await page.wait_for_selector("#profile-view svg")
    assert await page.locator("#profile-view rect.attn").count() == 30
    await page.screenshot(path=str(artifacts / "web-profile.png"))


async def test_step_through_reaches_the_logits(page, artifacts: Path) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_function("document.querySelectorAll('#tokens .token').length === 6")
    await page.click("#tabs button[data-tab=steps]")
    await page.wait_for_function("document.getElementById('step-name').textContent === 'embed'")
    await page.click("#step-next")
    await page.wait_for_function(
        "document.getElementById('step-name').textContent === 'layers.0.attn_norm'"
    )
    await page.select_option("#step-layer", "3")
    await page.wait_for_function(
        "document.getElementById('step-name').textContent === 'layers.3.attn_norm'"
    )
    await page.screenshot(path=str(artifacts / "web-step.png"))
    await page.click("#step-last")
    await page.wait_for_function("document.getElementById('step-name').textContent === 'logits'")
    assert "543 / 543" in await page.locator("#step-pos").text_content()
    await page.wait_for_selector("#step-view svg")
    await page.screenshot(path=str(artifacts / "web-step-logits.png"))


async def test_generate_streams_then_inspects(page, artifacts: Path) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_function("document.querySelectorAll('#tokens .token').length === 6")
    await page.click("#tabs button[data-tab=generate]")
    await page.click("#gen-send")
    await page.wait_for_function(
        "document.getElementById('gen-stats').textContent.includes('TTFT')", timeout=60_000
    )
    assert "Paris" in await page.locator("#gen-log").text_content()
    await page.screenshot(path=str(artifacts / "web-generate.png"))
    await page.click("#gen-inspect")
    await page.wait_for_function("document.querySelectorAll('#tokens .token').length > 30")
    assert "<|im_start|>" in await page.locator("#tokens").text_content()


async def test_compare_and_errors(page, artifacts: Path) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_function("document.querySelectorAll('#tokens .token').length === 6")
    await page.click("#tabs button[data-tab=compare]")
    await page.click("#compare-run")
    await page.wait_for_function("document.querySelectorAll('#compare-maps .heatmap').length === 3")
    await page.screenshot(path=str(artifacts / "web-compare.png"))
    await page.fill("#prompt", "")
    await page.click("#run")
    await page.wait_for_selector("#error:not([hidden])")
    text = await page.locator("#error").text_content()
    assert "INVALID_ARGUMENT" in text and "empty" in text
    await page.screenshot(path=str(artifacts / "web-error.png"))
