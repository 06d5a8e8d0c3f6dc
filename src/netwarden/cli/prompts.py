"""`netwarden prompts`: the questions rules with action = "ask" put to a person, on
the terminal: list them, answer one, or sit and answer each as it comes."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from netwarden.cli.api_client import ApiError, call

app = typer.Typer(
    help="Ask prompts: connections `netwarden up` holds while a person decides "
    '(rules with action = "ask"). Without a command: list the open ones.',
    invoke_without_command=True,
)

CHOICES = {
    "a": ("allow", "once", "destination"),
    "d": ("deny", "once", "destination"),
    "A": ("allow", "always", "destination"),
    "D": ("deny", "always", "destination"),
    "A*": ("allow", "always", "any"),
    "D*": ("deny", "always", "any"),
}
KEYS = (
    "a allow once, d deny once, A/D allow/deny always to this destination, "
    "A*/D* always to any destination"
)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"netwarden: {message}", err=True)
    raise typer.Exit(code)


def describe(prompt: dict[str, Any]) -> str:
    program = prompt["program"] or "an unknown program"
    who = f"{program} (pid {prompt['pid']}, {prompt['exe'] or 'exe unknown'})"
    user = f" as {prompt['user']}" if prompt["user"] else ""
    towards = "to" if prompt["direction"] == "out" else "from"
    peer = prompt["destination"] if prompt["direction"] == "out" else prompt["remote"]
    left = max(0, int(prompt["opened"] + prompt["timeout"] - time.time()))
    many = prompt.get("connections", 1)
    waiting = f"{many} connections waiting; " if many > 1 else ""
    return (
        f"[{prompt['id']}] {who}{user} wants {prompt['transport']} {towards} {peer} "
        f"({waiting}{left}s left; rule {prompt['rule']})"
    )


@app.callback()
def listing(
    context: typer.Context,
    ask: Annotated[
        bool, typer.Option("--ask", help="Stay, and ask on this terminal as prompts come.")
    ] = False,
) -> None:
    if context.invoked_subcommand is not None:
        return
    if ask:
        _ask_loop()
        return
    try:
        prompts = call("GET", "/api/prompts")
    except ApiError as exc:
        _fail(str(exc))
        return
    if not prompts:
        typer.echo("no open prompts")
    for prompt in prompts:
        typer.echo(describe(prompt))


@app.command()
def answer(
    prompt_id: Annotated[int, typer.Argument(metavar="ID", help="The prompt's number.")],
    action: Annotated[str, typer.Argument(metavar="allow|deny")],
    always: Annotated[
        bool, typer.Option("--always", help="Remember it as a rule (the answers file).")
    ] = False,
    any_destination: Annotated[
        bool, typer.Option("--any", help="With --always: for any destination of the program.")
    ] = False,
) -> None:
    """Answer one prompt.

    Example:\n
      netwarden prompts answer 3 allow --always
    """
    if action not in ("allow", "deny"):
        _fail(f"the answer is allow or deny, not {action!r}", 2)
    body = {
        "action": action,
        "duration": "always" if always else "once",
        "scope": "any" if any_destination else "destination",
        "by": "terminal",
    }
    try:
        settled = call("POST", f"/api/prompts/{prompt_id}", body)
    except ApiError as exc:
        _fail(str(exc))
        return
    remembered = f"; remembered as rule {settled['remembered']}" if settled["remembered"] else ""
    typer.echo(f"[{prompt_id}] {settled['state']}{remembered}")


def _ask_loop() -> None:
    """Poll the open prompts and ask about each new one (Ctrl-C ends)."""
    asked: set[int] = set()
    typer.echo(f"waiting for prompts ({KEYS}); Ctrl-C ends", err=True)
    try:
        while True:
            try:
                prompts = call("GET", "/api/prompts")
            except ApiError as exc:
                _fail(str(exc))
                return
            for prompt in prompts:
                if prompt["id"] in asked:
                    continue
                asked.add(prompt["id"])
                _ask_one(prompt)
            time.sleep(0.5)
    except (KeyboardInterrupt, EOFError):
        typer.echo("", err=True)


def _ask_one(prompt: dict[str, Any]) -> None:
    typer.echo(describe(prompt))
    while True:
        sys.stdout.write("answer> ")
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        choice = CHOICES.get(line.strip())
        if choice is not None:
            break
        typer.echo(KEYS)
    action, duration, scope = choice
    body = {"action": action, "duration": duration, "scope": scope, "by": "terminal"}
    try:
        settled = call("POST", f"/api/prompts/{prompt['id']}", body)
    except ApiError as exc:
        typer.echo(f"netwarden: {exc}", err=True)
        return
    typer.echo(f"[{prompt['id']}] {settled['state']}")
