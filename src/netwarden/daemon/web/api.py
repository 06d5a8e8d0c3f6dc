"""The control API and the dashboard, one ASGI application (FastAPI: typed requests
checked before they reach netwarden, and an OpenAPI description for free; see
docs/web.md). Every request carries the token: a header (`Authorization: Bearer T`
or `X-Netwarden-Token: T`) or the dashboard's cookie, set by /login?token=T. Requests
that change something and come with the cookie alone must also carry the header
`X-Netwarden-CSRF` (a page of another site cannot send it without a CORS preflight,
which is never answered). Only Host names of loopback are served (no DNS rebinding)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from netwarden.daemon.policy_control import PolicyControl, PolicyRefused
from netwarden.daemon.web.live import PUSH_SECONDS, LiveView
from netwarden.engine.prompts import Answer, PromptBook, PromptError
from netwarden.jsontext import dumps
from netwarden.monitor.history import HistoryError, HistoryQuery, HistoryStore

COOKIE = "netwarden_token"
CSRF_HEADER = b"x-netwarden-csrf"
KEEPALIVE_SECONDS = 15.0
SAFE_METHODS = ("GET", "HEAD")
STATIC = ("index.html", "app.js", "style.css")
TYPES = {"html": "text/html; charset=utf-8", "js": "text/javascript", "css": "text/css"}


@dataclass
class Daemon:
    """What the API reaches of a running `netwarden up`."""

    live: LiveView
    prompts: PromptBook | None
    policy: PolicyControl | None
    callouts: Callable[[], dict[str, Any]]
    history: HistoryStore | None
    doctor: Callable[[], list[dict[str, Any]]]


class AnswerBody(BaseModel):
    action: Literal["allow", "deny"]
    duration: Literal["once", "always"] = "once"
    scope: Literal["destination", "any"] = "destination"
    by: str = Field("api", max_length=40)


class PolicyText(BaseModel):
    text: str = Field(max_length=4_000_000)
    dry_run: bool = True


class FlowTest(BaseModel):
    flow: str = Field(max_length=1000, examples=["tcp out 10.0.0.5:40000 -> 192.0.2.7:443"])
    at: str | None = None


def _loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class TokenGuard:
    """ASGI middleware: 401 without the token, 403 for a foreign Host or a cookie-only
    change without the CSRF header."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"localhost").decode("latin-1")
        if not _loopback_host(host):
            await _plain(403, "netwarden answers only to loopback host names")(scope, receive, send)
            return
        if scope["path"] == "/login":
            await self.app(scope, receive, send)
            return
        given, by_cookie = self._given(headers)
        if given is None or not hmac.compare_digest(given, self.token):
            await _plain(401, "a token is required: see docs/web.md")(scope, receive, send)
            return
        if by_cookie and scope["method"] not in SAFE_METHODS and CSRF_HEADER not in headers:
            await _plain(403, "X-Netwarden-CSRF header missing")(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _given(headers: dict[bytes, bytes]) -> tuple[bytes | None, bool]:
        authorization = headers.get(b"authorization", b"")
        if authorization.lower().startswith(b"bearer "):
            return authorization[7:].strip(), False
        if b"x-netwarden-token" in headers:
            return headers[b"x-netwarden-token"].strip(), False
        for part in headers.get(b"cookie", b"").split(b";"):
            name, _eq, value = part.strip().partition(b"=")
            if name == COOKIE.encode():
                return value, True
        return None, False


def _plain(status: int, text: str) -> Response:
    return Response(text + "\n", status_code=status, media_type="text/plain")


def build_app(daemon: Daemon, token: str) -> ASGIApp:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async def pushing() -> None:
            while True:
                await asyncio.sleep(PUSH_SECONDS)
                daemon.live.push()

        task = asyncio.create_task(pushing())
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(
        title="netwarden control API",
        version="1",
        description="The live flows, processes, history, policy, callouts and ask prompts "
        "of a running `netwarden up`. Every request carries the token (docs/web.md).",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )

    @app.get("/login", include_in_schema=False)
    def login(token_given: Annotated[str, Query(alias="token")] = "") -> Response:
        if not hmac.compare_digest(token_given.encode(), token.encode()):
            return _plain(401, "wrong or missing token")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return HTMLResponse(_asset("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        kind = TYPES[name.rsplit(".", 1)[1]]
        return Response(_asset(name), media_type=kind, headers={"Cache-Control": "no-cache"})

    @app.get("/api/flows", summary="The live flows (closed ones for a few seconds more)")
    def flows() -> dict[str, Any]:
        return daemon.live.snapshot()

    @app.get("/api/events", summary="Server-Sent Events: a snapshot, then changes")
    async def events() -> StreamingResponse:
        client = daemon.live.join(asyncio.get_running_loop())

        async def stream() -> AsyncIterator[bytes]:
            try:
                snapshot = daemon.live.snapshot()
                snapshot["prompts"] = _prompts(daemon)
                yield f"event: snapshot\ndata: {dumps(snapshot)}\n\n".encode()
                while True:
                    try:
                        payload = await asyncio.wait_for(client.queue.get(), KEEPALIVE_SECONDS)
                    except TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                    yield payload
            finally:
                daemon.live.leave(client)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/api/processes", summary="Bytes and connections per process since start")
    def processes() -> list[dict[str, Any]]:
        return daemon.live.processes()

    @app.get("/api/history", summary="Recorded flows, newest first")
    def history(
        process: str | None = None,
        host: str | None = None,
        port: Annotated[int | None, Query(ge=0, le=65535)] = None,
        since: float | None = None,
        until: float | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 200,
    ) -> list[dict[str, Any]]:
        if daemon.history is None:
            raise HTTPException(404, "netwarden up runs without a history (--no-history)")
        query = HistoryQuery(process, since, until, host, port, limit)
        try:
            return [flow.to_json() for flow in daemon.history.query(query)]
        except (HistoryError, ValueError) as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/api/detections", summary="What the content scanners found, newest first")
    def detections(
        limit: Annotated[int, Query(ge=1, le=10000)] = 200,
    ) -> list[dict[str, object]]:
        if daemon.history is None:
            return []
        return daemon.history.detections(limit=limit)

    @app.get("/api/policy", summary="The policy in force, its text and counters")
    def policy() -> dict[str, Any]:
        return _policy(daemon).show()

    @app.post("/api/policy/check", summary="Check a policy text")
    def check(body: PolicyText) -> JSONResponse:
        try:
            checked = _policy(daemon).check(body.text)
        except PolicyRefused as exc:
            return JSONResponse({"valid": False, "problems": exc.problems}, status_code=422)
        return JSONResponse({"valid": True, "rules": len(checked.rules), "problems": []})

    @app.post("/api/policy/test", summary="Which rule decides a flow, and why")
    def test(body: FlowTest) -> dict[str, Any]:
        try:
            return _policy(daemon).test(body.flow, body.at)
        except PolicyRefused as exc:
            raise HTTPException(422, exc.problems) from None

    @app.post("/api/policy/apply", summary="Apply a policy text (dry_run: only the diff)")
    def apply(body: PolicyText) -> JSONResponse:
        try:
            return JSONResponse(_policy(daemon).apply(body.text, body.dry_run))
        except PolicyRefused as exc:
            return JSONResponse({"applied": False, "problems": exc.problems}, status_code=422)
        except Exception as exc:  # the kernel refused: the previous policy stays
            return JSONResponse({"applied": False, "problems": [str(exc)]}, status_code=500)

    @app.get("/api/callouts", summary="Callouts loaded, with their counters")
    def callouts() -> dict[str, Any]:
        return daemon.callouts()

    @app.get("/api/prompts", summary="Open ask prompts")
    def prompts() -> list[dict[str, object]]:
        return _prompts(daemon)

    @app.post("/api/prompts/{prompt_id}", summary="Answer an ask prompt")
    def answer(prompt_id: int, body: AnswerBody) -> dict[str, object]:
        if daemon.prompts is None:
            raise HTTPException(404, "no rule or callout asks here")
        given = Answer(
            allow=body.action == "allow",
            always=body.duration == "always",
            any_destination=body.scope == "any",
            by=body.by,
        )
        try:
            return daemon.prompts.answer(prompt_id, given).to_json()
        except PromptError as exc:
            raise HTTPException(409, str(exc)) from None

    @app.get("/api/doctor", summary="Which kernel mechanisms work here")
    def doctor() -> list[dict[str, Any]]:
        return daemon.doctor()

    return TokenGuard(app, token)


def _policy(daemon: Daemon) -> PolicyControl:
    if daemon.policy is None:
        raise HTTPException(404, "no policy control here")
    return daemon.policy


def _prompts(daemon: Daemon) -> list[dict[str, object]]:
    if daemon.prompts is None:
        return []
    return [prompt.to_json() for prompt in daemon.prompts.pending()]


def _asset(name: str) -> bytes:
    return (resources.files("netwarden.web") / name).read_bytes()
