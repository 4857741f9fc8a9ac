"""Pure pieces of the edge: error mapping, auth, rate limits, metrics, OpenAPI."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Annotated, Literal

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from somabrain import config as soma_config
from somabrain.config import AuthSettings, TenantRateLimit
from somabrain.edge.auth import Authenticator, TokenIssuer, dev_secret
from somabrain.edge.errors import HTTPError, from_decode_error, from_validation
from somabrain.edge.metrics import Metrics, render_tree_metrics
from somabrain.edge.nesting import json_depth, nests_too_deep
from somabrain.edge.openapi import openapi_document, openapi_json
from somabrain.edge.ratelimit import RateLimiter
from somabrain.edge.schemas import RecallRequest, RememberBatchRequest
from somabrain.supervision import ConfigError

# ----------------------------------------------------------------------------- errors


class Item(msgspec.Struct, forbid_unknown_fields=True):
    content: str
    top_k: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    layer: Literal["wm", "ltm"] = "ltm"


class Batch(msgspec.Struct, forbid_unknown_fields=True):
    items: list[Item]


def validation_error(raw: bytes, kind: type = Item) -> HTTPError:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.json.decode(raw, type=kind)
    error = from_validation(info.value)
    assert error.status == 422
    return error


@pytest.mark.parametrize(
    ("raw", "kind", "code", "field"),
    [
        (b'{"content": "x", "top_k": "a"}', Item, "invalid_field", "top_k"),
        (b'{"content": "x", "top_k": 1000}', Item, "out_of_range", "top_k"),
        (b'{"content": "x", "top_k": 0}', Item, "out_of_range", "top_k"),
        (b'{"top_k": 1}', Item, "missing_field", "content"),
        (b'{"content": "x", "bogus": 1}', Item, "unknown_field", "bogus"),
        (b'{"content": "x", "layer": "q"}', Item, "invalid_field", "layer"),
        (b"[1, 2]", Item, "invalid_field", None),
        (
            b'{"items": [{"content": "x"}, {"content": 3}]}',
            Batch,
            "invalid_field",
            "items[1].content",
        ),
        (b'{"items": [{"content": "x"}, {"nope": 3}]}', Batch, "unknown_field", "items[1].nope"),
        (b'{"items": [{}]}', Batch, "missing_field", "items[0].content"),
    ],
)
def test_validation_errors_name_the_field(
    raw: bytes, kind: type, code: str, field: str | None
) -> None:
    error = validation_error(raw, kind)
    assert (error.code, error.field) == (code, field)


def test_validation_error_prefix_and_message() -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.json.decode(b'{"top_k": "a", "content": "x"}', type=Item)
    error = from_validation(info.value, prefix="filters")
    assert error.field == "filters.top_k"
    assert "Expected `int`, got `str`" in error.message


def test_malformed_json_is_400() -> None:
    with pytest.raises(msgspec.DecodeError) as info:
        msgspec.json.decode(b'{"content": ', type=Item)
    error = from_decode_error(info.value)
    assert (error.status, error.code) == (400, "malformed_json")


@pytest.mark.parametrize(
    ("raw", "depth"),
    [
        (b"1", 0),
        (b'"[{"', 0),
        (b"[]", 1),
        (b'{"a": [1, {"b": []}], "c": {}}', 4),
        (b'{"a": "]]]]", "b": [["[", "\\"", "\\\\"]]}', 3),  # brackets in strings, escapes
        (b"[" * 100 + b"]" * 100, 100),
    ],
)
def test_json_depth_counts_nesting_outside_strings(raw: bytes, depth: int) -> None:
    assert json_depth(raw) == depth
    assert not nests_too_deep(raw, limit=depth)
    assert nests_too_deep(raw, limit=depth - 1) or depth == 0


def test_retry_later_rounds_up_to_whole_seconds() -> None:
    assert HTTPError.retry_later(429, "x", "y", 0.01).headers == ((b"retry-after", b"1"),)
    assert HTTPError.retry_later(429, "x", "y", 2.2).headers == ((b"retry-after", b"3"),)


# ----------------------------------------------------------------------------- auth


def test_dev_secret_is_created_once_private_and_reused(tmp_path: Path) -> None:
    first = dev_secret(tmp_path)
    assert len(first) >= 32
    mode = stat.S_IMODE(os.stat(tmp_path / "dev-secret").st_mode)
    assert mode == 0o600
    assert dev_secret(tmp_path) == first


def test_dev_secret_needs_an_existing_data_dir(tmp_path: Path) -> None:
    # A secret made in a mistyped directory would sign tokens that no node accepts.
    missing = tmp_path / "typo"
    with pytest.raises(FileNotFoundError, match=f"data dir {missing} does not exist"):
        dev_secret(missing)
    assert not missing.exists()


def test_dev_secret_recovers_from_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "dev-secret").write_bytes(b"")
    os.utime(tmp_path / "dev-secret", (time.time() - 60, time.time() - 60))
    assert len(dev_secret(tmp_path)) >= 32


def authenticator(tmp_path: Path, **settings: object) -> Authenticator:
    return Authenticator(AuthSettings(**settings), tmp_path)  # type: ignore[arg-type]


def test_issued_tokens_verify_and_resolve_tenants(tmp_path: Path) -> None:
    auth = authenticator(tmp_path)
    token = auth.issuer().issue(["acme"], scopes=["admin"])
    principal = auth.authenticate(f"Bearer {token}")
    assert principal.tenants == {"acme"} and principal.scopes == {"admin"}
    assert principal.resolve_tenant(None) == "acme"
    assert principal.resolve_tenant("acme") == "acme"
    principal.require_scope("admin")
    assert auth.authenticate(f"bearer {token}") is principal  # cached


def expect(code: str, status: int, fn: object, *args: object) -> HTTPError:
    with pytest.raises(HTTPError) as info:
        fn(*args)  # type: ignore[operator]
    assert (info.value.status, info.value.code) == (status, code)
    return info.value


def test_tenant_resolution_rules(tmp_path: Path) -> None:
    auth = authenticator(tmp_path)
    both = auth.authenticate("Bearer " + auth.issuer().issue(["a", "b"]))
    expect("tenant_required", 400, both.resolve_tenant, None)
    assert both.resolve_tenant("b") == "b"
    expect("tenant_forbidden", 403, both.resolve_tenant, "c")
    expect("invalid_tenant", 400, both.resolve_tenant, "../etc")
    expect("insufficient_scope", 403, both.require_scope, "admin")
    anyone = auth.authenticate("Bearer " + auth.issuer().issue(["*"]))
    assert anyone.resolve_tenant("whoever") == "whoever"
    expect("tenant_required", 400, anyone.resolve_tenant, None)


def test_admin_implies_metrics_and_scope_only_tokens(tmp_path: Path) -> None:
    auth = authenticator(tmp_path)
    admin = auth.authenticate("Bearer " + auth.issuer().issue(["acme"], scopes=["admin"]))
    admin.authorize("metrics")
    assert admin.scopes == {"admin"}  # policies and audit records see the token's own scopes
    metrics = auth.authenticate("Bearer " + auth.issuer().issue(["acme"], scopes=["metrics"]))
    expect("insufficient_scope", 403, metrics.authorize, "admin")
    scraper = auth.authenticate("Bearer " + auth.issuer().issue([], scopes=["metrics"]))
    assert scraper.tenants == frozenset()
    scraper.authorize("metrics")
    expect("insufficient_scope", 403, scraper.authorize, "admin")
    expect("tenant_forbidden", 403, scraper.authorize, "")  # "any token for a tenant"
    expect("tenant_forbidden", 403, scraper.resolve_tenant, None)
    expect("tenant_forbidden", 403, scraper.resolve_tenant, "acme")
    with pytest.raises(ValueError, match="tenant or one scope"):
        auth.issuer().issue([])


def test_bad_tokens_are_401(tmp_path: Path) -> None:
    auth = authenticator(tmp_path)
    error = expect("missing_token", 401, auth.authenticate, None)
    assert (b"www-authenticate", b"Bearer") in error.headers
    expect("invalid_token", 401, auth.authenticate, "Basic dXNlcjpwYXNz")
    expect("invalid_token", 401, auth.authenticate, "Bearer not.a.jwt")
    forged = jwt.encode({"tenants": ["a"], "exp": time.time() + 60}, "x" * 40, algorithm="HS256")
    expect("invalid_token", 401, auth.authenticate, f"Bearer {forged}")
    expired = auth.issuer().issue(["a"], ttl=-60)
    expect("token_expired", 401, auth.authenticate, f"Bearer {expired}")
    secret = dev_secret(tmp_path)
    no_exp = jwt.encode({"tenants": ["a"]}, secret, algorithm="HS256")
    expect("invalid_token", 401, auth.authenticate, f"Bearer {no_exp}")
    no_tenant = jwt.encode({"exp": time.time() + 60}, secret, algorithm="HS256")
    expect("invalid_token", 401, auth.authenticate, f"Bearer {no_tenant}")
    odd = jwt.encode({"tenants": ["a/../b"], "exp": time.time() + 60}, secret, algorithm="HS256")
    expect("invalid_token", 401, auth.authenticate, f"Bearer {odd}")
    none_alg = jwt.encode({"tenants": ["a"], "exp": time.time() + 60}, None, algorithm="none")
    expect("invalid_token", 401, auth.authenticate, f"Bearer {none_alg}")
    odd_type = jwt.encode({"tenants": [1], "exp": time.time() + 60}, secret, algorithm="HS256")
    error = expect("invalid_token", 401, auth.authenticate, f"Bearer {odd_type}")
    assert (b"www-authenticate", b"Bearer") in error.headers  # as every other 401


def test_cached_tokens_still_expire(tmp_path: Path) -> None:
    auth = authenticator(tmp_path, leeway=0.0)
    token = auth.issuer().issue(["a"], ttl=30)
    principal = auth.authenticate(f"Bearer {token}")
    principal.expires_at = time.time() - 1  # as if 30 s had passed
    expect("token_expired", 401, auth.authenticate, f"Bearer {token}")


def test_single_tenant_and_scope_string_claims(tmp_path: Path) -> None:
    auth = authenticator(tmp_path, secret="s" * 40)
    claims = {"tenant": "solo", "scope": "admin read", "exp": time.time() + 60, "sub": "me"}
    principal = auth.authenticate("Bearer " + jwt.encode(claims, "s" * 40, algorithm="HS256"))
    assert principal.tenants == {"solo"} and principal.scopes == {"admin", "read"}
    assert principal.subject == "me"


def test_issuer_and_audience_are_checked(tmp_path: Path) -> None:
    auth = authenticator(tmp_path, issuer="soma", audience="agents")
    good = auth.issuer().issue(["a"])
    auth.authenticate(f"Bearer {good}")
    other = authenticator(tmp_path, issuer="evil", audience="agents").issuer().issue(["a"])
    expect("invalid_token", 401, auth.authenticate, f"Bearer {other}")


@pytest.mark.parametrize("algorithm", ["RS256", "EdDSA"])
def test_public_key_algorithms(tmp_path: Path, algorithm: str) -> None:
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else ed25519.Ed25519PrivateKey.generate()
    )
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(pem)
    settings = AuthSettings(algorithm=algorithm, public_key_file=str(key_file))  # type: ignore[arg-type]
    auth = Authenticator(settings, None)
    assert not auth.can_sign
    token = TokenIssuer(private, algorithm, settings).issue(["acme"])
    assert auth.authenticate(f"Bearer {token}").tenants == {"acme"}
    hs = jwt.encode({"tenants": ["a"], "exp": time.time() + 60}, "k" * 40, algorithm="HS256")
    expect("invalid_token", 401, auth.authenticate, f"Bearer {hs}")


def test_issuer_refuses_bad_tenant_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        authenticator(tmp_path).issuer().issue(["a/b"])


# ----------------------------------------------------------------------------- rate limits


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_per_tenant() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0  # another tenant has its own bucket
    clock.now += 0.5
    assert limiter.acquire("a") == 0.0
    clock.now += 100
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # capped at burst
    assert limiter.acquire("a") > 0
    assert limiter.limited == 2


def test_rate_limiter_reconfigure_and_disable() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(1.0)
    limiter.configure(10.0, 1, enabled=False)
    assert all(limiter.acquire("a") == 0.0 for _ in range(100))
    with pytest.raises(ValueError):
        limiter.configure(0, 1)


def test_per_tenant_overrides() -> None:
    clock = FakeClock()
    tenants = {
        "slow": TenantRateLimit(rate=0.5, burst=2),
        "bursty": TenantRateLimit(burst=10),  # rate inherited
        "free": TenantRateLimit(enabled=False),
    }
    limiter = RateLimiter(rate=2.0, burst=3, tenants=tenants, clock=clock)
    assert limiter.limit_of("slow") == (0.5, 2.0, True)
    assert limiter.limit_of("bursty") == (2.0, 10.0, True)
    assert limiter.limit_of("anyone") == (2.0, 3.0, True)
    assert [limiter.acquire("slow") for _ in range(2)] == [0.0, 0.0]
    assert limiter.acquire("slow") == pytest.approx(2.0)  # 1 token at 0.5/s
    assert all(limiter.acquire("bursty") == 0.0 for _ in range(10))
    assert limiter.acquire("bursty") == pytest.approx(0.5)
    assert all(limiter.acquire("free") == 0.0 for _ in range(1000))
    assert "free" not in limiter._buckets
    # a reload replaces every override: "slow" is back on the node-wide limit, capped at 3
    limiter.configure(2.0, 3, tenants={"anyone": TenantRateLimit(rate=1.0)})
    clock.now += 100
    assert [limiter.acquire("slow") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("slow") > 0
    # node-wide off, one tenant still limited
    limiter.configure(2.0, 3, enabled=False, tenants={"slow": TenantRateLimit(enabled=True)})
    assert all(limiter.acquire("other") == 0.0 for _ in range(100))
    assert limiter.acquire("slow") > 0
    with pytest.raises(ValueError, match="tenant 'x'"):
        limiter.configure(2.0, 3, tenants={"x": TenantRateLimit(burst=0)})


def test_idle_buckets_are_pruned_with_their_own_limits() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1000.0, burst=10, tenants={"slow": TenantRateLimit(rate=0.01)},
                          clock=clock)  # fmt: skip
    limiter.acquire("slow")
    limiter.acquire("fast")
    clock.now += 1.0  # "fast" is full again, "slow" is not
    for i in range(10_000):
        limiter.acquire(f"t{i % 2}")
    assert "slow" in limiter._buckets and "fast" not in limiter._buckets


def test_rate_limit_overrides_from_the_config_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "soma.toml"
    path.write_text(
        "[edge.rate_limit]\nrate = 100.0\n"
        "[edge.rate_limit.tenants.acme]\nrate = 5.0\nburst = 10\n"
        '[edge.rate_limit.tenants."Big.Co"]\nenabled = false\n'
    )
    env = {"SOMA_EDGE__RATE_LIMIT__TENANTS__NOISY__RATE": "1.5"}
    rl = soma_config.load(path, environ=env).edge.rate_limit
    assert rl.tenants == {
        "acme": TenantRateLimit(rate=5.0, burst=10),
        "Big.Co": TenantRateLimit(enabled=False),
        "noisy": TenantRateLimit(rate=1.5),
    }
    for text, key, message in [
        ("[edge.rate_limit.tenants.acme]\nrate = 0\n", "edge.rate_limit.tenants.acme.rate", ">"),
        ("[edge.rate_limit.tenants.acme]\nbrust = 3\n", "edge.rate_limit.tenants.acme.brust",
         "unknown field"),
        ('[edge.rate_limit.tenants."a/b"]\nrate = 1.0\n', "edge.rate_limit", "'a/b' is not a"),
    ]:  # fmt: skip
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            soma_config.load(path, environ={})
        assert info.value.key == key and message in str(info.value)


# ----------------------------------------------------------------------------- metrics


def test_metrics_exposition() -> None:
    metrics = Metrics()
    metrics.observe("recall", "POST", 200, 0.002)
    metrics.observe("recall", "POST", 200, 0.2)
    metrics.observe("recall", "POST", 422, 0.0001)
    metrics.count_rate_limited("acme")
    tree = {
        "path": "/root",
        "kind": "supervisor",
        "state": "running",
        "restarts": 0,
        "children": [
            {
                "path": "/root/edge",
                "kind": "actor",
                "state": "running",
                "restarts": 2,
                "mailbox_depth": 3,
                "mailbox_capacity": 10,
            },
            {
                "path": "/root/memory",
                "kind": "dynamic",
                "state": "running",
                "restarts": 0,
                "passivations": 4,
                "children": [],
            },
        ],
    }
    text = metrics.render(render_tree_metrics(tree, {"total": 5, "by_recipient": {"/x": 5}}, True))
    assert 'soma_http_requests_total{route="recall",method="POST",status="200"} 2' in text
    assert 'le="0.0025"} 2' in text and 'le="+Inf"} 3' in text
    assert 'soma_http_request_duration_seconds_count{route="recall",method="POST"} 3' in text
    assert 'soma_rate_limited_total{tenant="acme"} 1' in text
    assert 'soma_mailbox_depth{path="/root/edge"} 3' in text
    assert 'soma_restarts_total{path="/root/edge",kind="actor"} 2' in text
    assert 'soma_passivations_total{path="/root/memory"} 4' in text
    assert "soma_dead_letters_total 5" in text
    assert "soma_tree_ready 1" in text
    assert text.endswith("\n")
    for line in text.splitlines():  # every sample line is "name{labels} value"
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1].replace("+Inf", "inf"))


# ----------------------------------------------------------------------------- openapi


def test_openapi_document_covers_every_route() -> None:
    doc = openapi_document()
    assert doc["openapi"] == "3.1.0"
    for path in (
        "/memory/remember",
        "/memory/remember/batch",
        "/memory/recall",
        "/memory/link",
        "/memory/{key}",
        "/healthz",
        "/readyz",
        "/health",
        "/metrics",
        "/openapi.json",
        "/admin/tree",
        "/admin/actors/kill",
        "/admin/reload",
    ):
        assert path in doc["paths"], path
    schemas = doc["components"]["schemas"]
    recall = schemas["RecallRequest"]
    assert recall["properties"]["top_k"]["maximum"] == 100
    assert recall["properties"]["top_k"]["minimum"] == 1
    assert recall["required"] == ["query"]
    assert "ErrorResponse" in schemas
    op = doc["paths"]["/memory/recall"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/RecallRequest"
    )
    assert {"401", "422", "429"} <= set(op["responses"])


def test_committed_openapi_document_is_current() -> None:
    committed = Path(__file__).parents[2] / "schemas" / "openapi.json"
    assert committed.read_bytes() == openapi_json(), (
        "schemas/openapi.json is stale: run `somabrain openapi > schemas/openapi.json`"
    )


def test_schemas_accept_the_original_api_fields() -> None:
    raw = b'{"tenant": "acme", "namespace": "n", "key": "k", "value": {"task": "t"}}'
    batch = msgspec.json.decode(b'{"items": [' + raw + b"]}", type=RememberBatchRequest)
    assert batch.items[0].value == {"task": "t"} and batch.items[0].tenant == "acme"
    recall = msgspec.json.decode(b'{"query": "q", "top_k": 3, "layer": "ltm"}', type=RecallRequest)
    assert (recall.top_k, recall.layer) == (3, "ltm")
