"""The operator page, driven in a real headless Chromium against the real service.

The test speaks the Chrome DevTools Protocol over a websocket (trio-websocket):
it navigates, waits for the events the page announces after each render
(``ess-list``, ``ess-stream``), types into the search field, clicks a row,
reads the DOM Chromium rendered and saves screenshots under ``artifacts/``.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from .service import ServiceProcess
from .test_debug_at_scale import prefilled_service, watched_streams

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
]
STEP_TIMEOUT = 30.0
SCALE_STREAMS = 10_000


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed (`make test` installs it)")
    return path


class Page:
    """One browser tab over the DevTools Protocol: commands in order, events awaited."""

    def __init__(self, ws: WebSocketConnection, session: str) -> None:
        self._ws = ws
        self._session = session
        self._ids = iter(range(1_000, 1_000_000))

    @staticmethod
    async def command(
        ws: WebSocketConnection, ids: Iterator[int], method: str, session: str | None, **params: Any
    ) -> dict[str, Any]:
        """Send a command and read messages until its answer (events before it are dropped)."""
        message_id = next(ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await ws.send_message(json.dumps(message))
        with trio.fail_after(STEP_TIMEOUT):
            while True:
                answer = json.loads(await ws.get_message())
                if answer.get("id") == message_id:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    result: dict[str, Any] = answer["result"]
                    return result

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.command(self._ws, self._ids, method, self._session, **params)

    async def wait_for(self, event: str) -> None:
        with trio.fail_after(STEP_TIMEOUT):
            while json.loads(await self._ws.get_message()).get("method") != event:
                pass

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (a promise is awaited)."""
        found = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in found:
            raise RuntimeError(f"page script failed: {found['exceptionDetails']}")
        return found["result"].get("value")

    async def open(self, url: str) -> None:
        await self.send("Page.enable")
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        await self.send("Page.navigate", url=url)
        await self.wait_for("Page.loadEventFired")

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


@asynccontextmanager
async def browser_page() -> AsyncIterator[Page]:
    """A fresh headless Chromium (own profile) and one tab in it."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"]
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            assert process.stderr is not None
            endpoint = await _devtools_endpoint(process.stderr)
            async with open_websocket_url(endpoint, max_message_size=64 * 1024 * 1024) as ws:
                ids = iter(range(1, 1_000))
                target = await Page.command(ws, ids, "Target.createTarget", None, url="about:blank")
                attached = await Page.command(
                    ws,
                    ids,
                    "Target.attachToTarget",
                    None,
                    targetId=target["targetId"],
                    flatten=True,
                )
                try:
                    yield Page(ws, attached["sessionId"])
                finally:
                    with trio.move_on_after(10):  # its helpers stop writing the profile too
                        await ws.send_message(json.dumps({"id": 0, "method": "Browser.close"}))
                        await process.wait()
        finally:
            process.kill()
            with trio.move_on_after(10):
                await process.wait()


async def _devtools_endpoint(stderr: trio.abc.ReceiveStream) -> str:
    """The ``ws://`` address Chromium prints once its DevTools server listens."""
    seen = b""
    with trio.fail_after(STEP_TIMEOUT):
        while b"DevTools listening on " not in seen or not seen.endswith(b"\n"):
            chunk = await stderr.receive_some()
            if not chunk:
                raise RuntimeError(f"chromium exited: {seen.decode(errors='replace')}")
            seen += chunk
    line = seen.split(b"DevTools listening on ", 1)[1].split(b"\n", 1)[0]
    return line.decode().strip()


WAIT_FIRST_RENDER = """new Promise((resolve) => {
  const done = () => resolve(Number(document.body.dataset.firstRender));
  if (document.body.dataset.firstRender) done();
  else document.addEventListener("ess-list", done, {once: true});
})"""


def search_for(text: str) -> str:
    """Type ``text`` into the search field; resolves to the ids of the list rendered for it."""
    quoted = json.dumps(text)
    return f"""new Promise((resolve) => {{
  document.addEventListener("ess-list", function seen(event) {{
    if (event.detail.q !== {quoted}) return;
    document.removeEventListener("ess-list", seen);
    resolve([...document.querySelectorAll("#streams tbody tr")].map((tr) => Number(tr.dataset.id)));
  }});
  const search = document.getElementById("search");
  search.value = {quoted};
  search.dispatchEvent(new Event("input"));
}})"""


def open_stream(stream_id: int) -> str:
    """Click the stream's row; resolves to the kinds and texts of the nodes shown for it."""
    return f"""new Promise((resolve) => {{
  document.addEventListener("ess-stream", function seen(event) {{
    if (event.detail.id !== "{stream_id}") return;
    document.removeEventListener("ess-stream", seen);
    const nodes = [...document.querySelectorAll("#detail .node")];
    resolve(nodes.map((n) => [n.dataset.kind, n.textContent]));
  }});
  document.querySelector('#streams tbody tr[data-id="{stream_id}"]').click();
}})"""


WAIT_OVERVIEW = """new Promise((resolve) => {
  if (document.body.dataset.overview) resolve(true);
  else document.addEventListener("ess-overview", () => resolve(true), {once: true});
})"""
HEADER = """Object.fromEntries(["stat-streams", "stat-websockets", "stat-broker", "stat-uptime",
  "stat-reconnects"].map((id) => [id, document.getElementById(id).textContent]))"""


async def test_small_service_shows_the_connection_under_its_stream(
    service: ServiceProcess, routing_key: str
) -> None:
    keys = (f"{routing_key}.alpha", f"{routing_key}.beta")
    async with watched_streams(service.api, *keys) as (_, streams), browser_page() as page:
        await page.open(f"{service.api}/debug/")
        await page.evaluate(WAIT_FIRST_RENDER)
        ids = await page.evaluate(search_for(routing_key))
        alpha = await page.evaluate(open_stream(streams[0]["id"]))
        await page.screenshot(ARTIFACTS / "debug-page.png")
        beta = await page.evaluate(open_stream(streams[1]["id"]))
    assert sorted(ids) == sorted(stream["id"] for stream in streams)
    assert [kind for kind, _ in alpha].count("connection") == 1, alpha
    assert "connection" not in [kind for kind, _ in beta], beta


@pytest.fixture(scope="module")
def service_10k(
    tmp_path_factory: pytest.TempPathFactory, amqp_url: str
) -> Iterator[ServiceProcess]:
    prefix = f"ess.e2e.page.{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp("ess-page-10k")
    with prefilled_service(workdir, amqp_url, SCALE_STREAMS, prefix) as proc:
        yield proc


async def test_at_10000_streams_renders_fast_searches_and_opens_a_stream(
    service_10k: ServiceProcess, routing_key: str
) -> None:
    async with (
        watched_streams(service_10k.api, routing_key) as (_, [created]),
        browser_page() as page,
    ):
        await page.open(f"{service_10k.api}/debug/")
        first_render_ms = await page.evaluate(WAIT_FIRST_RENDER)
        rows = await page.evaluate("document.querySelectorAll('#streams tbody tr').length")
        await page.evaluate(WAIT_OVERVIEW)
        header = await page.evaluate(HEADER)
        await page.screenshot(ARTIFACTS / "debug-page-10k.png")
        ids = await page.evaluate(search_for(routing_key))
        nodes = await page.evaluate(open_stream(created["id"]))
        await page.screenshot(ARTIFACTS / "debug-page-stream.png")
    assert first_render_ms < 1000, first_render_ms
    assert rows == 100  # one page of the 10,001 streams, not all of them
    assert header["stat-streams"].replace(",", "") in (str(SCALE_STREAMS), str(SCALE_STREAMS + 1))
    assert ids == [created["id"]]
    connections = [text for kind, text in nodes if kind == "connection"]
    assert len(connections) == 1, nodes
    assert "127.0.0.1:" in connections[0] and "lag" in connections[0]
