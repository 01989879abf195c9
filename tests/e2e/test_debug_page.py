"""The actor-tree page, rendered by a real headless Chromium against the real service."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import trio

from .client import connect
from .service import ServiceProcess

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
]


@dataclass
class Node:
    """A rendered ``div.node`` of the page: its kind, name, fields and children."""

    kind: str = ""
    name: str = ""
    text: list[str] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)


class TreeParser(HTMLParser):
    """Rebuilds the actor tree from the DOM Chromium rendered (not from the JSON)."""

    def __init__(self) -> None:
        super().__init__()
        self.roots: list[Node] = []
        self._stack: list[tuple[str, Node | None, str]] = []

    def _current_node(self) -> Node | None:
        for _, node, _ in reversed(self._stack):
            if node is not None:
                return node
        return None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        node = None
        if tag == "div" and "node" in classes:
            node = Node()
            parent = self._current_node()
            (parent.children if parent else self.roots).append(node)
        self._stack.append((tag, node, classes[0] if classes else ""))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            open_tag, _, _ = self._stack.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        node = self._current_node()
        if node is None or not self._stack:
            return
        css = self._stack[-1][2]
        if css == "kind":
            node.kind = data.strip()
        elif css == "name":
            node.name = data.strip()
        else:
            node.text.append(data)


def walk(nodes: list[Node]) -> list[Node]:
    found: list[Node] = []
    for node in nodes:
        found.append(node)
        found.extend(walk(node.children))
    return found


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed (`make test` installs it)")
    return path


def render(url: str, screenshot: Path) -> str:
    """The DOM after the page's script ran, and a screenshot of it."""
    with tempfile.TemporaryDirectory() as profile:
        base = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [*base, "--virtual-time-budget=5000", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        subprocess.run(
            [
                *base,
                "--virtual-time-budget=5000",
                "--window-size=1280,900",
                f"--screenshot={screenshot}",
                url,
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
    return dom


async def test_page_shows_streams_and_the_connection_under_its_stream(
    service: ServiceProcess, routing_key: str
) -> None:
    async with httpx.AsyncClient(base_url=service.api, timeout=10.0) as api:
        streams = []
        for suffix in ("alpha", "beta"):
            response = await api.post(
                "/event-stream/", json={"routing_key": f"{routing_key}.{suffix}"}
            )
            assert response.status_code == 201
            streams.append(response.json())
        async with connect(streams[0]["location"]) as ws:
            # The connection is in the tree once it has been accepted; a ping
            # round trip proves the server-side handshake completed.
            await ws.ping()
            ARTIFACTS.mkdir(exist_ok=True)
            screenshot = ARTIFACTS / "debug-page.png"
            dom = await trio.to_thread.run_sync(render, f"{service.api}/debug/", screenshot)
        for stream in streams:
            await api.delete(f"/event-stream/{stream['id']}")

    parser = TreeParser()
    parser.feed(dom)
    nodes = walk(parser.roots)
    stream_nodes = {
        key: node
        for node in nodes
        if node.kind == "stream"
        for key in (f"{routing_key}.alpha", f"{routing_key}.beta")
        if key in "".join(node.text)
    }
    assert set(stream_nodes) == {f"{routing_key}.alpha", f"{routing_key}.beta"}, dom[:2000]
    alpha_kinds = [node.kind for node in walk(stream_nodes[f"{routing_key}.alpha"].children)]
    beta_kinds = [node.kind for node in walk(stream_nodes[f"{routing_key}.beta"].children)]
    assert "connection" in alpha_kinds
    assert "connection" not in beta_kinds
    assert screenshot.stat().st_size > 10_000
