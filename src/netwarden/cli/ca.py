"""`netwarden ca`: the certificate authority TLS interception signs with, and the
memory of hosts whose clients refused it."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from netwarden.jsontext import dumps

if TYPE_CHECKING:
    from netwarden.tls.ca import CertificateAuthority

app = typer.Typer(
    help="The CA that TLS interception (intercept_tls = true in the policy's inspect "
    "section) signs leaf certificates with. Clients must trust it: see `netwarden ca show`.",
    no_args_is_help=True,
)
passthrough_app = typer.Typer(
    help="Hosts whose clients refused netwarden's certificate (certificate pinning, or "
    "the CA not trusted): relayed untouched for a while, per client program.",
    no_args_is_help=True,
)
app.add_typer(passthrough_app, name="passthrough")

INSTALL = """\
Trust it on this machine (Debian/Ubuntu, for curl, Python, most programs):
  netwarden ca export --output /usr/local/share/ca-certificates/netwarden.crt
  update-ca-certificates
Chromium (its own store, per user):
  certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n netwarden -i {pem}
Firefox: Settings > Privacy & Security > Certificates > View Certificates > Authorities
  > Import ({pem}), tick "Trust this CA to identify websites"; or, for every profile,
  a policies.json with {{"policies": {{"Certificates": {{"Install": ["{pem}"]}}}}}}.
One program: curl --cacert {pem} ...; Python: SSL_CERT_FILE={pem}."""


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"netwarden: {message}", err=True)
    raise typer.Exit(code)


def _directory(state_dir: Path | None) -> Path:
    from netwarden.tls.ca import ca_directory

    return ca_directory(state_dir)


def _load(state_dir: Path | None) -> CertificateAuthority:
    from netwarden.tls import ca

    try:
        return ca.load(_directory(state_dir))
    except ca.CaError as exc:
        _fail(str(exc), 1)
        raise


StateDir = Annotated[
    Path | None,
    typer.Option(
        help="netwarden's state directory; default /var/lib/netwarden for root, "
        "~/.local/state/netwarden otherwise (or $NETWARDEN_STATE_DIR)."
    ),
]


@app.command()
def init(
    state_dir: StateDir = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing CA (clients must trust anew).")
    ] = False,
) -> None:
    """Make the CA (an EC P-256 key, readable by its owner only, and a certificate valid
    for ten years)."""
    from netwarden.tls import ca

    directory = _directory(state_dir)
    if not force:
        try:
            existing = ca.load(directory)
        except ca.CaError as exc:
            if (directory / "ca.key").exists():
                _fail(f"{exc}; --force replaces it", 1)
        else:
            typer.echo(
                f"netwarden: a CA exists already in {directory} "
                f"(SHA-256 {existing.fingerprint()}); --force replaces it"
            )
            return
    try:
        made = ca.create(directory)
    except OSError as exc:
        _fail(f"cannot write the CA in {directory}: {exc.strerror or exc}", 1)
        return
    for stale in (directory / "leaves").glob("*.pem"):
        stale.unlink(missing_ok=True)
    typer.echo(f"made a CA in {directory}\nSHA-256 {made.fingerprint()}\n")
    typer.echo(INSTALL.format(pem=made.certificate_path))


@app.command()
def show(
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The CA's name, fingerprint, validity and files, and how clients come to trust it."""
    found = _load(state_dir)
    certificate = found.certificate
    document = {
        "subject": certificate.subject.rfc4514_string(),
        "sha256": found.fingerprint(),
        "not_before": certificate.not_valid_before_utc.isoformat(),
        "not_after": certificate.not_valid_after_utc.isoformat(),
        "certificate": str(found.certificate_path),
        "key": str(found.directory / "ca.key"),
    }
    if as_json:
        typer.echo(dumps(document))
        return
    for key, value in document.items():
        typer.echo(f"{key:12} {value}")
    typer.echo("\n" + INSTALL.format(pem=found.certificate_path))


@app.command()
def export(
    state_dir: StateDir = None,
    der: Annotated[bool, typer.Option("--der", help="DER (binary) instead of PEM.")] = False,
    output: Annotated[
        Path | None, typer.Option(help="Write here instead of to standard output.")
    ] = None,
) -> None:
    """The CA certificate (never its key), PEM by default, for clients to trust."""
    found = _load(state_dir)
    data = found.der() if der else found.pem()
    if output is not None:
        try:
            output.write_bytes(data)
        except OSError as exc:
            _fail(f"cannot write {output}: {exc.strerror or exc}", 1)
        return
    if der and sys.stdout.isatty():
        _fail("DER is binary: give --output FILE")
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


@passthrough_app.command("list")
def passthrough_list(
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Hosts relayed untouched because a client refused our certificate, until when."""
    from netwarden.tls.passthrough import PassthroughMemory

    memory = PassthroughMemory(_directory(state_dir) / "passthrough.json")
    entries = memory.entries()
    if as_json:
        for entry in entries:
            typer.echo(
                dumps(
                    {
                        "host": entry.host,
                        "program": entry.program,
                        "until": entry.until,
                        "reason": entry.reason,
                    }
                )
            )
        return
    if not entries:
        typer.echo("no host is passed through for a refused certificate")
        return
    for entry in entries:
        until = datetime.datetime.fromtimestamp(entry.until).strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(f"{entry.host}  {entry.program or '?'}  until {until}  ({entry.reason})")


@passthrough_app.command("clear")
def passthrough_clear(
    host: Annotated[str | None, typer.Argument(help="Only this host.")] = None,
    state_dir: StateDir = None,
) -> None:
    """Forget hosts (all, or one): their next connections are intercepted again."""
    from netwarden.tls.passthrough import PassthroughMemory

    memory = PassthroughMemory(_directory(state_dir) / "passthrough.json")
    try:
        count = memory.clear(host)
    except OSError as exc:
        _fail(f"cannot write {memory.path}: {exc.strerror or exc}", 1)
        return
    typer.echo(f"forgot {count} host{'s' if count != 1 else ''}")
