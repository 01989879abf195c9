"""The human view of the actor tree: ``GET /debug/`` and its static files."""

from __future__ import annotations

import pytest

from .web_fakes import FakeDirectory
from .web_servers import make_app


@pytest.mark.parametrize("path", ["/debug/", "/debug"])
async def test_page_references_its_script_and_styles(path: str) -> None:
    client = make_app(FakeDirectory()).test_client()
    response = await client.get(path)
    assert response.status_code == 200
    assert response.content_type.startswith("text/html")
    html = await response.get_data(as_text=True)
    assert '<script src="/debug/static/debug.js"></script>' in html
    assert 'href="/debug/static/debug.css"' in html
    assert "http://" not in html and "https://" not in html  # no external fetches


@pytest.mark.parametrize(
    ("name", "content_type", "marker"),
    [
        ("debug.js", "text/javascript", "/debug/actors"),
        ("debug.css", "text/css", ".node"),
    ],
)
async def test_static_files_are_served(name: str, content_type: str, marker: str) -> None:
    client = make_app(
        FakeDirectory(), internal_token="secret"
    ).test_client()  # static files need no token
    response = await client.get(f"/debug/static/{name}")
    assert response.status_code == 200
    assert response.content_type.startswith(content_type)
    assert marker in await response.get_data(as_text=True)


async def test_script_never_builds_markup_from_data() -> None:
    client = make_app(FakeDirectory()).test_client()
    script = await (await client.get("/debug/static/debug.js")).get_data(as_text=True)
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "Bearer" in script and "#token=" in script


async def test_actor_data_needs_the_token_but_the_page_does_not() -> None:
    client = make_app(FakeDirectory(), internal_token="secret").test_client()
    assert (await client.get("/debug/")).status_code == 200
    assert (await client.get("/debug/actors")).status_code == 401
    response = await client.get("/debug/actors", headers={"Authorization": "Bearer secret"})
    assert response.status_code == 200
    assert (await response.get_json())["kind"] == "supervisor"


async def test_missing_static_file_is_json_404() -> None:
    response = await make_app(FakeDirectory()).test_client().get("/debug/static/nope.js")
    assert response.status_code == 404
    assert await response.get_json() == {"detail": "Not found"}
