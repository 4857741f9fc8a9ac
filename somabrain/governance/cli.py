"""``somabrain constitution``: keygen, init, sign, verify, show, publish.

An operator's round (see ``docs/governance.md``)::

    somabrain constitution keygen --id alice --out keys/      # each signer, on their machine
    somabrain constitution init --signer keys/alice.pub --signer keys/bob.pub \\
        --signer keys/carol.pub --threshold 2 --out v1.json   # draft from policies/
    somabrain constitution sign v1.json --key keys/alice.key  # k of the n signers
    somabrain constitution sign v1.json --key keys/bob.key
    somabrain constitution verify v1.json
    somabrain constitution publish v1.json --url http://127.0.0.1:9696 --token "$ADMIN"

Rotation: ``init --from v1.json`` drafts version 2 (new signers, threshold or policies); it
needs k signatures of v1's signers on top of k of its own (``verify --previous v1.json``).
Exit codes: 0 ok, 1 refused (verification failed, node refused), 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from ._exceptions import ConstitutionError, GovernanceError
from .canonical import checksum
from .constitution import (
    SignedConstitution,
    VerifiedConstitution,
    count_signatures,
    draft,
    parse_signed,
    verify,
)
from .dev import default_policies_dir, read_policy_source
from .signing import SignerKey, public_key_from_file

__all__ = ["register"]


def _read(path: str) -> SignedConstitution:
    try:
        return parse_signed(Path(path).read_bytes())
    except OSError as exc:
        raise GovernanceError(f"cannot read {path}: {exc.strerror}") from None


def _write(path: str, signed: SignedConstitution) -> None:
    data = msgspec.json.format(msgspec.json.encode(signed), indent=2) + b"\n"
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    key = SignerKey.generate(args.id)
    private, public = out / f"{args.id}.key", out / f"{args.id}.pub"
    key.write(private)
    public.write_text(json.dumps(key.public_json(), indent=2) + "\n", "utf-8")
    print(f"signer {key.id}: public key {key.public_key}")
    print(f"private key: {private} (mode 0600, keep it secret)")
    print(f"public key:  {public} (give it to whoever drafts the constitution)")
    return 0


def _signer(spec: str) -> dict[str, str]:
    """``path/to/id.pub`` (or a .key), or ``id=<64 hex>``."""
    if "=" in spec and not Path(spec).exists():
        signer_id, _, public = spec.partition("=")
        return {"id": signer_id, "public_key": public.lower()}
    return public_key_from_file(spec)


def _init(args: argparse.Namespace) -> int:
    previous: VerifiedConstitution | None = None
    if args.from_:
        previous = verify(_read(args.from_))
    policies_dir = Path(args.policies) if args.policies else default_policies_dir()
    if args.policies and not policies_dir.is_dir():
        raise GovernanceError(f"--policies {policies_dir}: no such directory")
    if args.policies or previous is None:
        modules, data = read_policy_source(policies_dir)
    else:
        modules, data = dict(previous.doc.policies), dict(previous.doc.policy)
    signers = [_signer(s) for s in args.signer] if args.signer else None
    if signers is None:
        if previous is None:
            raise GovernanceError("give the signers: --signer keys/alice.pub (repeatable)")
        signers = [{"id": s.id, "public_key": s.public_key} for s in previous.doc.signers]
    threshold = args.threshold
    if threshold is None:
        threshold = previous.doc.threshold if previous is not None else 0
    if not threshold:
        raise GovernanceError("give the threshold: --threshold K")
    articles: Any = previous.doc.articles if previous is not None else None
    if args.articles:
        articles = json.loads(Path(args.articles).read_text("utf-8"))
    signed = draft(
        signers=signers,
        threshold=threshold,
        policy=data,
        policies=modules,
        articles=articles,
        previous=previous,
        issued_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    _write(args.out, signed)
    version = signed.document["version"]
    print(f"drafted version {version} -> {args.out}")
    print(f"checksum {checksum(signed.document)}")
    print(f"needs {threshold} of {len(signers)} signatures", end="")
    if previous is not None and (
        previous.doc.threshold != threshold
        or {(s.id, s.public_key) for s in previous.doc.signers}
        != {(s["id"], s["public_key"]) for s in signers}
    ):
        print(f", and {previous.doc.threshold} of version {previous.version}'s signers (rotation)")
    else:
        print()
    return 0


def _sign(args: argparse.Namespace) -> int:
    signed = _read(args.document)
    key = SignerKey.read(args.key)
    digest = checksum(signed.document)
    if any(s.signer == key.id and s.checksum == digest for s in signed.signatures):
        print(f"{key.id} already signed {digest[:16]}...")
        return 0
    signed = SignedConstitution(
        document=signed.document, signatures=[*signed.signatures, key.sign(digest)]
    )
    _write(args.out or args.document, signed)
    version = signed.document.get("version")
    print(f"signed by {key.id}: version {version}, checksum {digest[:16]}...")
    return 0


def _verify(args: argparse.Namespace) -> int:
    signed = _read(args.document)
    previous = verify(_read(args.previous)) if args.previous else None
    try:
        verified = verify(signed, previous=previous)
    except ConstitutionError as exc:
        print(f"REFUSED ({exc.code}): {exc}")
        return 1
    _, failures = count_signatures(verified.checksum, signed.signatures, verified.doc.signers)
    print(f"valid: version {verified.version}, checksum {verified.checksum}")
    print(
        f"signed by {', '.join(verified.signed_by)} "
        f"({len(verified.signed_by)} of {len(verified.doc.signers)}, "
        f"threshold {verified.doc.threshold})"
    )
    if previous is not None:
        print(f"a valid successor of version {previous.version}")
    for failure in failures:
        print(f"  not counted: {failure}")
    return 0


def _show(args: argparse.Namespace) -> int:
    if args.url:
        status, body = _http("GET", f"{args.url.rstrip('/')}/constitution/version", args.token)
        print(json.dumps(body, indent=2))
        return 0 if status == 200 else 1
    if args.document is None:
        raise GovernanceError("name a document to show, or a running node with --url")
    signed = _read(args.document)
    document = signed.document
    summary = {
        "checksum": checksum(document),
        **{k: document.get(k) for k in ("version", "previous", "issued_at", "threshold")},
        "signers": document.get("signers"),
        "signatures": [s.signer for s in signed.signatures],
        "policies": sorted(document.get("policies") or {}),
        "policy": document.get("policy"),
        "articles": document.get("articles"),
    }
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _http(method: str, url: str, token: str | None, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, {"error": {"message": exc.reason}}
    except urllib.error.URLError as exc:
        raise GovernanceError(f"cannot reach {url}: {exc.reason}") from None


def _publish(args: argparse.Namespace) -> int:
    signed = _read(args.document)
    try:  # refuse locally first: the node would, and this says why without a round trip
        verify(signed)
    except ConstitutionError as exc:
        print(f"REFUSED locally ({exc.code}): {exc}")
        return 1
    token = args.token or os.environ.get("SOMA_TOKEN")
    status, body = _http(
        "POST",
        f"{args.url.rstrip('/')}/constitution/load",
        token,
        msgspec.json.encode(signed),
    )
    if status == 200:
        print(
            f"published: version {body.get('version')} active on {args.url}"
            + (" (already active)" if body.get("unchanged") else "")
        )
        return 0
    error = body.get("error", {}) if isinstance(body, dict) else {}
    print(f"REFUSED by the node ({status} {error.get('code')}): {error.get('message')}")
    return 1


def _run(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result: int = handler(args)
        except ConstitutionError as exc:
            print(f"error ({exc.code}): {exc}", file=sys.stderr)
            return 1
        except (GovernanceError, OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return result

    return run


def _threshold(text: str) -> int:
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of signatures: {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {k}")
    return k


def register(commands: Any) -> None:
    """Add ``constitution`` and its subcommands to the ``somabrain`` parser."""
    parser = commands.add_parser(
        "constitution",
        help="keygen, init, sign, verify, show and publish signed constitutions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="constitution_command", required=True)

    keygen = sub.add_parser("keygen", help="create an Ed25519 signer key pair")
    keygen.add_argument("--id", required=True, help="the signer's id (e.g. alice)")
    keygen.add_argument("--out", default=".", help="directory for <id>.key and <id>.pub")
    keygen.set_defaults(func=_run(_keygen))

    init = sub.add_parser("init", help="draft a new (unsigned) constitution version")
    init.add_argument(
        "--signer", action="append", help="a signer: <id>.pub file or id=<hex> (repeatable)"
    )
    init.add_argument(
        "--threshold",
        type=_threshold,
        help="k: signatures required (default with --from: the previous version's)",
    )
    init.add_argument(
        "--policies",
        help="directory with *.rego and data.json (default with --from: the previous version's;"
        f" else {default_policies_dir()})",
    )
    init.add_argument("--articles", help="JSON file with the free-form articles")
    init.add_argument(
        "--from", dest="from_", metavar="PREVIOUS", help="draft the successor of this version"
    )
    init.add_argument("--out", required=True, help="where to write the draft")
    init.set_defaults(func=_run(_init))

    sign = sub.add_parser("sign", help="add your signature to a document")
    sign.add_argument("document")
    sign.add_argument("--key", required=True, help="your private key file (<id>.key)")
    sign.add_argument("--out", help="write here instead of in place")
    sign.set_defaults(func=_run(_sign))

    check = sub.add_parser("verify", help="verify signatures (and a rotation with --previous)")
    check.add_argument("document")
    check.add_argument("--previous", help="the version this one succeeds")
    check.set_defaults(func=_run(_verify))

    show = sub.add_parser("show", help="summarize a document, or a running node's version")
    show.add_argument("document", nargs="?")
    show.add_argument("--url", help="a running node (GET /constitution/version)")
    show.add_argument("--token", default=os.environ.get("SOMA_TOKEN"), help="bearer token")
    show.set_defaults(func=_run(_show))

    publish = sub.add_parser("publish", help="load a signed document into a running node")
    publish.add_argument("document")
    publish.add_argument("--url", default="http://127.0.0.1:9696", help="the node's edge")
    publish.add_argument(
        "--token", help="admin bearer token (default $SOMA_TOKEN; 'somabrain token --scope admin')"
    )
    publish.set_defaults(func=_run(_publish))
