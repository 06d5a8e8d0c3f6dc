"""`netwarden callouts`: what is loaded, where from, at which layers, and what each
callout did."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from netwarden.jsontext import dumps

app = typer.Typer(
    help="Callouts: Python objects that decide new connections (classify) and hear of "
    "flows starting and ending, loaded by `netwarden up --callouts FILE`.",
    no_args_is_help=True,
)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"netwarden: {message}", err=True)
    raise typer.Exit(code)


@app.command("list")
def list_callouts(
    files: Annotated[
        list[Path] | None,
        typer.Option("--file", help="Show the callouts of this file instead (not running)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The running daemon's callouts with their counters (calls, verdicts, errors,
    time); with --file, the callouts a file defines and their layers."""
    if files:
        from netwarden.callout.loading import CalloutLoadError, load_file

        callouts: list[dict[str, Any]] = []
        for path in files:
            try:
                callouts += [c.to_json() for c in load_file(path)]
            except CalloutLoadError as exc:
                _fail(str(exc))
        document: dict[str, Any] = {"running": False, "callouts": callouts}
    else:
        from netwarden.daemon import state

        running = state.read()
        if running is None or not state.alive(running.pid):
            _fail(
                "netwarden up is not running here; `callouts list --file FILE` shows a "
                "file's callouts",
                1,
            )
            return
        none_loaded = {"fail_mode": "", "budget_seconds": 0.0, "queue": "", "decided": 0}
        status = state.read_callouts() or {**none_loaded, "callouts": []}
        document = {"running": True, "pid": running.pid, **status}
    if as_json:
        sys.stdout.write(dumps(document) + "\n")
        return
    _print(document)


def _print(document: dict[str, Any]) -> None:
    if document.get("running") and not document["callouts"]:
        typer.echo(
            f"netwarden up (pid {document['pid']}) runs no callouts and no rules "
            "by program: no CONNECT layer"
        )
        return
    if document.get("running"):
        typer.echo(
            f"netwarden up (pid {document['pid']}): fail-{document['fail_mode']}, "
            f"budget {document['budget_seconds'] * 1000:.0f} ms, "
            f"queue: {document['queue'] or 'none'}, {document['decided']} "
            "connections decided"
        )
    rows = document["callouts"]
    if not rows:
        typer.echo("no callouts loaded")
        return
    typer.echo(
        f"{'NAME':20} {'WEIGHT':>7}  {'LAYERS':32} {'CALLS':>8} {'ERRORS':>6} "
        f"{'AVG MS':>7}  VERDICTS  (FROM)"
    )
    for row in rows:
        calls = row["calls"]
        average = row["seconds"] / calls * 1000 if calls else 0.0
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(row["verdicts"].items())) or "-"
        typer.echo(
            f"{row['name'][:20]:20} {row['weight']:>7}  {','.join(row['layers'])[:32]:32} "
            f"{calls:>8} {row['errors'] + row['overruns']:>6} {average:>7.3f}  "
            f"{verdicts}  ({row['origin']})"
        )
