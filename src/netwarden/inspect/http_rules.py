"""HTTP rules applied to one request (and to its response): pure decisions."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from netwarden.inspect.scanning import Direction, Finding
from netwarden.policy.inspect_model import HttpAction, HttpRule

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class RequestVerdict:
    blocked_by: HttpRule | None = None
    allowed_by: HttpRule | None = None
    rewrites: tuple[HttpRule, ...] = ()
    by_content_type: tuple[HttpRule, ...] = ()  # block rules decided by the response


def decide_request(rules: Iterable[HttpRule], method: str, host: str, path: str) -> RequestVerdict:
    rewrites: list[HttpRule] = []
    deferred: list[HttpRule] = []
    for rule in rules:
        if not rule.matches_request(method, host, path):
            continue
        if rule.action is HttpAction.REWRITE:
            rewrites.append(rule)
        elif rule.content_types:
            deferred.append(rule)
        elif rule.action is HttpAction.ALLOW:
            return RequestVerdict(allowed_by=rule, rewrites=tuple(rewrites))
        else:
            return RequestVerdict(blocked_by=rule, rewrites=tuple(rewrites))
    return RequestVerdict(rewrites=tuple(rewrites), by_content_type=tuple(deferred))


def blocked_by_content(verdict: RequestVerdict, content_type: str) -> HttpRule | None:
    for rule in verdict.by_content_type:
        if rule.matches_content_type(content_type):
            return rule
    return None


def rewritten(
    headers: Sequence[tuple[bytes, bytes]],
    changes: Iterable[tuple[tuple[tuple[str, str], ...], tuple[str, ...]]],
) -> Headers:
    """headers with each (set, remove) change applied in order."""
    out = list(headers)
    for setting, removing in changes:
        names = {n.lower().encode() for n in removing} | {n.lower().encode() for n, _ in setting}
        out = [(n, v) for n, v in out if n.lower() not in names]
        out += [(n.encode(), v.encode("latin-1")) for n, v in setting]
    return out


def block_page(rule: HttpRule, method: str, host: str, path: str) -> tuple[Headers, bytes]:
    why = f"by the rule <b>{html.escape(rule.name)}</b> (policy line {rule.line})"
    return _page(method, host, path, why, (b"x-netwarden-rule", rule.name))


def scan_block_page(
    finding: Finding, direction: Direction, method: str, host: str, path: str
) -> tuple[Headers, bytes]:
    what = "upload" if direction is Direction.UPLOAD else "download"
    why = (
        f"because {html.escape(finding.scanner)} found <b>{html.escape(finding.signature)}</b> "
        f"in its {what}"
    )
    return _page(method, host, path, why, (b"x-netwarden-scan", finding.signature))


def _page(
    method: str, host: str, path: str, why: str, tag: tuple[bytes, str]
) -> tuple[Headers, bytes]:
    what = html.escape(f"{method} {host}{path}"[:300])
    body = (
        '<!doctype html><html><head><meta charset="utf-8"><title>Blocked by netwarden'
        "</title></head><body><h1>Blocked by netwarden</h1>"
        f"<p>The request <code>{what}</code> was blocked {why}.</p></body></html>\n"
    ).encode()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (tag[0], tag[1].encode("ascii", "replace")),
    ]
    return headers, body
