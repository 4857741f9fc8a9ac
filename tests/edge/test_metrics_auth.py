"""Who may read ``GET /metrics``: its labels name tenants and show their traffic, so it needs a
token with the ``metrics`` scope (or ``admin``, which implies it) unless the operator sets
``edge.metrics_public``. A scraper's token names no tenant and opens nothing else.

In-process (the ASGI app against a real tree, both backends), plus the ``somabrain token``
command that mints the scraper's token."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from somabrain.cli import main
from somabrain.config import AuthSettings
from somabrain.edge.auth import Authenticator
from somabrain.edge.openapi import openapi_document
from tests.edge.test_app import Harness, error_of, harness

pytestmark = pytest.mark.anyio


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def anonymous(h: Harness) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=h.app),  # type: ignore[arg-type]
        base_url="http://edge",
    )


def scraped(r: httpx.Response) -> bool:
    return (
        r.status_code == 200
        and r.headers["content-type"].startswith("text/plain")
        and "soma_http_requests_total" in r.text
    )


async def test_metrics_need_a_token_by_default(tmp_path: Path) -> None:
    async with harness(tmp_path) as h, anonymous(h) as nobody:
        r = await nobody.get("/metrics")
        assert r.status_code == 401 and error_of(r)["code"] == "missing_token"
        assert r.headers["www-authenticate"] == "Bearer"
        r = await nobody.get("/metrics", headers=bearer("not.a.jwt"))
        assert r.status_code == 401 and error_of(r)["code"] == "invalid_token"
        # The probes stay open: a load balancer checks them without a token.
        assert (await nobody.get("/healthz")).status_code == 200
        assert (await nobody.get("/readyz")).status_code == 200


async def test_a_tenant_token_without_the_scope_is_403(tmp_path: Path) -> None:
    async with harness(tmp_path) as h, h.client("acme") as agent:
        assert (await agent.post("/memory/recall", json={"query": "x"})).status_code == 200
        r = await agent.get("/metrics")
        assert r.status_code == 403 and error_of(r)["code"] == "insufficient_scope"
        assert "'metrics'" in error_of(r)["message"]


async def test_the_metrics_scope_reads_metrics_and_nothing_else(tmp_path: Path) -> None:
    async with harness(tmp_path) as h, anonymous(h) as client:
        scraper = bearer(h.token(scopes=("metrics",)))  # no tenant, as `somabrain token` makes
        assert scraped(await client.get("/metrics", headers=scraper))
        r = await client.post("/memory/recall", json={"query": "x"}, headers=scraper)
        assert r.status_code == 403 and error_of(r)["code"] == "tenant_forbidden"
        r = await client.post(
            "/memory/recall", json={"query": "x"}, headers={**scraper, "X-Tenant-ID": "acme"}
        )
        assert r.status_code == 403 and error_of(r)["code"] == "tenant_forbidden"
        r = await client.get("/admin/tree", headers=scraper)
        assert r.status_code == 403 and error_of(r)["code"] == "insufficient_scope"
        r = await client.get("/constitution/version", headers=scraper)  # any tenant's token
        assert r.status_code == 403 and error_of(r)["code"] == "tenant_forbidden"
        # A tenant's token may carry the scope too.
        both = bearer(h.token("acme", scopes=("metrics",)))
        assert scraped(await client.get("/metrics", headers=both))


async def test_admin_implies_metrics(tmp_path: Path) -> None:
    async with harness(tmp_path) as h, h.client(scopes=("admin",)) as admin:
        assert scraped(await admin.get("/metrics"))
        async with anonymous(h) as client:
            only_admin = bearer(h.token(scopes=("admin",)))
            assert scraped(await client.get("/metrics", headers=only_admin))
            assert (await client.get("/admin/tree", headers=only_admin)).status_code == 200


async def test_metrics_public_needs_no_token(tmp_path: Path) -> None:
    async with harness(tmp_path, metrics_public=True) as h, anonymous(h) as nobody:
        assert scraped(await nobody.get("/metrics"))
        # A scraper that still sends a token (even a stale one) is not turned away.
        assert scraped(await nobody.get("/metrics", headers=bearer("not.a.jwt")))
        # Only /metrics opens.
        r = await nobody.get("/admin/tree")
        assert r.status_code == 401 and error_of(r)["code"] == "missing_token"
    environ = {"SOMA_EDGE__METRICS_PUBLIC": "true"}
    async with harness(tmp_path, environ=environ) as h, anonymous(h) as nobody:
        assert scraped(await nobody.get("/metrics"))


async def test_reload_opens_and_closes_metrics(tmp_path: Path) -> None:
    config = tmp_path / "soma.toml"
    config.write_text("[edge]\nmetrics_public = true\n")
    async with harness(tmp_path) as h, h.client(scopes=("admin",)) as admin, anonymous(h) as nobody:
        h.app.system.resources["config_path"] = config
        assert (await nobody.get("/metrics")).status_code == 401
        r = await admin.post("/admin/reload", json={})
        assert "edge: settings changed" in r.json()["changes"]
        assert scraped(await nobody.get("/metrics"))
        config.write_text("[edge]\nmetrics_public = false\n")
        await admin.post("/admin/reload", json={})
        assert (await nobody.get("/metrics")).status_code == 401


def test_openapi_shows_how_metrics_are_guarded() -> None:
    op = openapi_document()["paths"]["/metrics"]["get"]
    assert op["security"] == [{"bearer": []}]
    assert {"401", "403"} <= set(op["responses"])
    assert "metrics scope" in op["description"] and "edge.metrics_public" in op["description"]
    admin = openapi_document()["paths"]["/admin/tree"]["get"]
    assert admin["description"] == "Needs a token with the admin scope."
    assert "description" not in openapi_document()["paths"]["/healthz"]["get"]


def test_token_command_mints_a_scraper_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "--scope", "metrics", "--data-dir", str(tmp_path), "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    principal = Authenticator(AuthSettings(), tmp_path).authenticate(f"Bearer {token}")
    assert principal.tenants == frozenset() and principal.scopes == {"metrics"}
    assert main(["token", "--data-dir", str(tmp_path)]) == 2
    assert "--scope metrics" in capsys.readouterr().err
