"""`idt`: run the IDT system locally (`idt up`) and load the office registry
(`idt offices load`). Thin: the work is done in `up`, `registry` and `offices`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import redis
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from idt_runtime.settings import RuntimeSettings

from .offices import (
    DEFAULT_OFFICES,
    RedisUnavailable,
    RegistryFileError,
    connect,
    publish_offices,
    read_registry,
    redact_url,
)
from .registry import HEADER, STREAM, RegistryParse, summarise
from .services import BY_NAME, SERVICES, Service
from .up import UpConfig, run_up
from .wallclock import wall_clock_now

#: Exit code for bad input (a bad registry file, a bad option): nothing was done.
EXIT_BAD_INPUT = 2

DEFAULT_REDIS_URL: str = RuntimeSettings.model_fields["redis_url"].default
REDIS_ENV = ["IDT_REDIS_URL", "REDIS_URL"]  # the order the services' settings use
DATABASE_ENV = ["IDT_DATABASE_URL", "DATABASE_URL"]

app = typer.Typer(
    name="idt",
    help="IDT: live tracking of benefit claims and the Interventions Delivery Target.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
offices_app = typer.Typer(
    help="The office registry: office-registered events.", no_args_is_help=True
)
app.add_typer(offices_app, name="offices")


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _aware_datetime(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 date-time, e.g. 2007-04-01T00:00:00+01:00"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        example = value if ("T" in value or " " in value) else value + "T00:00:00"
        raise typer.BadParameter(
            f"{value!r} has no UTC offset; give one, e.g. {example}+01:00 or {example}Z"
        )
    return moment


# ---------------------------------------------------------------- idt offices load


@offices_app.command("load")
def offices_load(
    file: Annotated[
        Path,
        typer.Argument(
            help=f"Registry CSV with the header {HEADER}.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    redis_url: Annotated[
        str, typer.Option("--redis-url", envvar=REDIS_ENV, show_envvar=True, help="Redis URL.")
    ] = DEFAULT_REDIS_URL,
    as_of: Annotated[
        datetime | None,
        typer.Option(
            "--as-of",
            parser=_aware_datetime,
            metavar="DATETIME",
            help="Event time, ISO 8601 with a UTC offset (default: now).",
        ),
    ] = None,
) -> None:
    """Validate FILE and publish one office-registered event per row.

    Every bad row is reported with its line number and nothing is published if
    any row is bad (exit code 2). Event ids are hashes of the row contents, so
    loading the same file again is deduplicated by the consumers."""
    out, err = _out(), _err()
    time = as_of or wall_clock_now()
    try:
        registry = read_registry(file, time=time)
    except RegistryFileError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if not registry.ok:
        _print_problems(err, file, registry)
        raise typer.Exit(EXIT_BAD_INPUT)
    try:
        client = connect(redis_url)
    except RedisUnavailable as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))} (nothing was published)")
        raise typer.Exit(1) from None
    try:
        entry_ids = publish_offices(client, registry.events)
    except redis.RedisError as exc:
        err.print(f"[bold red]error:[/] publishing to {STREAM} failed: {escape(str(exc))}")
        raise typer.Exit(1) from None
    finally:
        client.close()
    summary = summarise(registry.events)
    table = Table(title=f"Offices in {escape(str(file))}", title_justify="left")
    table.add_column("kind")
    table.add_column("offices", justify="right")
    for kind, count in summary.by_kind.items():
        table.add_row(kind.value, str(count))
    table.add_row("[bold]total[/]", f"[bold]{summary.total}[/]")
    out.print(table)
    out.print(
        f"Jobcentres in {summary.districts} districts and {summary.regions} regions.\n"
        f"Published {len(entry_ids)} office-registered events to {STREAM} at "
        f"{escape(redact_url(redis_url))} (event time {time.isoformat()})."
    )


def _print_problems(err: Console, file: Path, registry: RegistryParse) -> None:
    n = len(registry.errors)
    err.print(
        f"[bold red]error:[/] {escape(str(file))}: {n} problem{'s' if n != 1 else ''}; "
        "nothing was published"
    )
    for problem in registry.errors:
        err.print(f"  {escape(str(problem))}")


# ---------------------------------------------------------------- idt up


def _with_port_options(func: Callable[..., None]) -> Callable[..., None]:
    """Give `func` (which takes `**ports`) one `--port-<service>` option per entry
    of the service table, so a new service needs no new code here."""
    sig = inspect.signature(func, eval_str=True)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    for svc in SERVICES:
        option = typer.Option(
            svc.port_option,
            envvar=svc.port_env,
            show_envvar=True,
            min=1,
            max=65535,
            metavar="PORT",
            help=f"Port of {svc.name} (default: {svc.default_port}).",
        )
        params.append(
            inspect.Parameter(
                _port_param(svc),
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[int | None, option],
            )
        )
    func.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return func


def _port_param(svc: Service) -> str:
    return "port_" + svc.name


def _parse_services(value: str) -> tuple[Service, ...]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise typer.BadParameter("name at least one service", param_hint="--services")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise typer.BadParameter(
            f"unknown service(s) {', '.join(map(repr, unknown))}; "
            f"the services are {', '.join(BY_NAME)}",
            param_hint="--services",
        )
    chosen = tuple(BY_NAME[n] for n in dict.fromkeys(names))
    missing = [s for s in chosen if not s.is_installed()]
    if missing:
        present = [s.name for s in chosen if s not in missing] or [
            s.name for s in SERVICES if s.is_installed()
        ]
        hint = f"; run only --services {','.join(present)}" if present else ""
        raise typer.BadParameter(
            "; ".join(f"{s.name} is not installed (no module {s.module})" for s in missing) + hint,
            param_hint="--services",
        )
    return chosen


@app.command()
@_with_port_options
def up(
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            envvar=REDIS_ENV,
            show_envvar=True,
            help="Use this Redis (default: start the embedded redis-server, AOF in VAR/redis).",
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar=DATABASE_ENV,
            show_envvar=True,
            help="SQLAlchemy URL shared by the services (default: SQLite files in VAR).",
        ),
    ] = None,
    var_dir: Annotated[
        Path,
        typer.Option(
            "--var-dir",
            envvar="IDT_VAR_DIR",
            show_envvar=True,
            file_okay=False,
            help="Data, logs (VAR/logs/<service>.log) and the embedded Redis.",
        ),
    ] = Path("var"),
    services: Annotated[
        str,
        typer.Option("--services", help="Comma-separated services to run."),
    ] = ",".join(s.name for s in SERVICES),
    offices: Annotated[
        Path | None,
        typer.Option(
            "--offices",
            dir_okay=False,
            metavar="FILE",
            help="Office registry to publish once the services are healthy. "
            "(default: deploy/registry/offices.csv)",
        ),
    ] = None,
    no_offices: Annotated[
        bool, typer.Option("--no-offices", help="Do not publish an office registry.")
    ] = False,
    host: Annotated[str, typer.Option("--host", help="Interface the services listen on.")] = (
        "127.0.0.1"
    ),
    startup_timeout: Annotated[
        float,
        typer.Option("--startup-timeout", min=1, help="Seconds to wait for every /health."),
    ] = 60.0,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="Also run the demo simulator: a year of claims ending today, in "
            "accelerated business time (what `make run` does).",
        ),
    ] = False,
    demo_day_seconds: Annotated[
        float,
        typer.Option("--demo-day-seconds", min=0.01, help="Wall seconds per business day."),
    ] = 0.5,
    **ports: Any,
) -> None:
    """Run Redis and every service in the foreground until Ctrl-C.

    Starts the embedded Redis unless a Redis URL is given, each service in its own
    process, waits until every /health answers 200, publishes the office registry
    and supervises: a service that exits stops everything (non-zero exit code);
    Ctrl-C or SIGTERM stops the services, then Redis, and exits 0."""
    if offices is not None and no_offices:
        raise typer.BadParameter(
            "use either --offices FILE or --no-offices", param_hint="--offices"
        )
    chosen = _parse_services(services)
    chosen_ports = {s.name: ports.get(_port_param(s)) or s.default_port for s in chosen}
    cfg = UpConfig(
        services=chosen,
        ports=chosen_ports,
        host=host,
        var_dir=var_dir,
        redis_url=redis_url,
        database_url=database_url,
        offices=None if no_offices else (offices or DEFAULT_OFFICES),
        startup_timeout=startup_timeout,
        demo=demo,
        demo_day_seconds=demo_day_seconds,
    )
    code = run_up(cfg, _out(), _err())
    raise typer.Exit(code)
