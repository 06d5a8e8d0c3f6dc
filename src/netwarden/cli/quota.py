"""`netwarden quota`: what each [[quota]] of the running daemon's policy used in its
period, and resets."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Annotated

import typer

from netwarden.jsontext import dumps
from netwarden.policy.limits_model import Quota

app = typer.Typer(
    help="Byte quotas (\\[\\[quota]] in the policy): usage this period, and resets. "
    "`netwarden up` counts them and keeps the counts across restarts.",
    no_args_is_help=True,
)

PolicyOption = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="The policy file (default: the one `netwarden up` runs here).",
        metavar="FILE",
    ),
]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"netwarden: {message}", err=True)
    raise typer.Exit(code)


def _quotas(path: Path | None) -> tuple[Quota, ...]:
    from netwarden.cli.policy import _load
    from netwarden.daemon import state

    if path is None:
        running = state.read()
        if running is None or not running.policy:
            _fail("no `netwarden up` runs here; name the policy with --policy FILE")
            raise AssertionError  # unreachable
        path = Path(running.policy)
    policy = _load(path)
    if not policy.quotas:
        _fail(f"{path} has no [[quota]]")
    return policy.quotas


@app.command("show")
def show(
    policy: PolicyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Each quota: whose traffic, what it used and has left this period, since when."""
    from netwarden.cli.render import aligned, human_bytes
    from netwarden.engine.quotas import QuotaBook
    from netwarden.paths import state_dir

    book = QuotaBook(_quotas(policy), state_dir())
    rows = book.report()
    if as_json:
        sys.stdout.write(dumps(rows) + "\n")
        return
    table = [("QUOTA", "WHO", "PERIOD", "USED", "LIMIT", "LEFT", "STATE", "SINCE")]
    for row in rows:
        used, limit = int(str(row["used"])), int(str(row["limit"]))
        since = datetime.datetime.fromtimestamp(float(str(row["period_start"])))
        table.append(
            (
                str(row["name"]),
                str(row["who"]),
                str(row["period"]),
                human_bytes(used),
                human_bytes(limit),
                human_bytes(max(0, limit - used)),
                ("reached: " + str(row["action"]) if row["reached"] else "ok"),
                since.strftime("%Y-%m-%d %H:%M"),
            )
        )
    typer.echo(aligned(table))


@app.command("reset")
def reset(
    names: Annotated[
        list[str] | None, typer.Argument(help="Quotas to reset (default: all).", metavar="NAME")
    ] = None,
    policy: PolicyOption = None,
) -> None:
    """Start quotas afresh for the rest of this period (the daemon applies it within a
    second)."""
    from netwarden.engine.quotas import request_reset
    from netwarden.paths import state_dir

    known = [quota.name for quota in _quotas(policy)]
    unknown = [name for name in names or [] if name not in known]
    if unknown:
        _fail(f"no quota {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
    chosen = names or known
    request_reset(state_dir(), chosen)
    typer.echo(f"reset: {', '.join(chosen)}")
