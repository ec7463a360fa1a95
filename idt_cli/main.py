"""`idt`: run the IDT system locally (`idt up`), load the office registry (`idt
offices load`), write a synthetic national log (`idt simulate`), replay a log
through the bus (`idt replay`) and show the scores (`idt scores`). Thin: the work
is done in `up`, `registry`, `offices`, `simulate`, `replay` and `scores`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from time import monotonic
from typing import Annotated, Any

import redis
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from idt_runtime.settings import RuntimeSettings

from . import replay as replay_log
from .demo import at
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
from .scores import ScoresError, fetch_scores, scores_table
from .services import BY_NAME, SERVICES, Service
from .simulate import DEFAULT_START, SimulationSpec, a_year_from, simulate, write_log
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


def _print_problems(
    err: Console, file: Path, registry: RegistryParse, action: str = "nothing was published"
) -> None:
    n = len(registry.errors)
    err.print(
        f"[bold red]error:[/] {escape(str(file))}: {n} problem{'s' if n != 1 else ''}; {action}"
    )
    for problem in registry.errors:
        err.print(f"  {escape(str(problem))}")


# ---------------------------------------------------------------- idt up


class ClockMode(StrEnum):
    live = "live"
    events = "events"


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
    clock: Annotated[
        ClockMode | None,
        typer.Option(
            "--clock",
            case_sensitive=False,
            help="Where business time comes from. live: a clock publisher child sends a "
            "clock-tick with the wall-clock time every --clock-interval; events: only the "
            "clock-ticks on the bus (a replayed log, the demo). (default: live; events "
            "with --demo, which publishes its own ticks)",
            show_default=False,
        ),
    ] = None,
    clock_interval: Annotated[
        float,
        typer.Option(
            "--clock-interval", min=0.1, metavar="SECONDS", help="Seconds between live ticks."
        ),
    ] = 60.0,
    **ports: Any,
) -> None:
    """Run Redis and every service in the foreground until Ctrl-C.

    Starts the embedded Redis unless a Redis URL is given, each service in its own
    process, waits until every /health answers 200, publishes the office registry,
    starts the clock publisher (--clock live) and supervises: a service or the clock
    that exits stops everything (non-zero exit code); Ctrl-C or SIGTERM stops the
    services, then Redis, and exits 0."""
    if offices is not None and no_offices:
        raise typer.BadParameter(
            "use either --offices FILE or --no-offices", param_hint="--offices"
        )
    if demo and clock is ClockMode.live:
        raise typer.BadParameter(
            "--demo publishes its own clock-ticks in accelerated business time; "
            "it cannot run with --clock live (leave --clock out, or use --clock events)",
            param_hint="--clock",
        )
    mode = clock or (ClockMode.events if demo else ClockMode.live)
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
        clock=mode.value,
        clock_interval=clock_interval,
    )
    code = run_up(cfg, _out(), _err())
    raise typer.Exit(code)


# ---------------------------------------------------------------- idt simulate


def _iso_date(value: str | date) -> date:
    if isinstance(value, date):  # the default
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date; use YYYY-MM-DD") from None


def _progress(out: Console, *, speed: bool = False) -> Progress:
    columns: list[Any] = [
        TextColumn("{task.description}"),
        BarColumn(),
        TransferSpeedColumn() if speed else MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    return Progress(*columns, console=out, transient=False)


@app.command("simulate")
def simulate_command(
    out_file: Annotated[
        Path,
        typer.Option("--out", dir_okay=False, metavar="FILE.jsonl", help="Where to write the log."),
    ],
    claims: Annotated[
        int, typer.Option("--claims", min=0, help="Claims registered over the span.")
    ] = 500,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 2007,
    start: Annotated[
        date,
        typer.Option(
            "--start",
            parser=_iso_date,
            metavar="YYYY-MM-DD",
            help=f"First business day of the span (default: {DEFAULT_START}).",
            show_default=False,
        ),
    ] = DEFAULT_START,
    days: Annotated[
        int | None,
        typer.Option(
            "--days", min=1, max=3660, help="Days in the span (default: a year from --start)."
        ),
    ] = None,
    offices: Annotated[
        Path,
        typer.Option(
            "--offices",
            dir_okay=False,
            metavar="FILE",
            help="Office registry whose office-registered events open the log.",
        ),
    ] = DEFAULT_OFFICES,
) -> None:
    """Write a synthetic national log of CloudEvents, one wire-format JSON per line.

    The registry's office-registered events come first, then a year (by default)
    of claims as the intakes and Jobcentres publish them: marker errors and resets,
    BDC delays and disallowances, interviews early, on time and late, failures to
    attend, waivers, deferrals, LMI doubts, closures, and a clock-tick at 23:30
    London closing every day; all in event-time order. No NI number is written:
    customer references are keyed HMACs under a fixed demo key. The same options
    give a byte-identical file; replay it with `idt replay`."""
    out, err = _out(), _err()
    parent = out_file.resolve().parent
    if not parent.is_dir():
        err.print(f"[bold red]error:[/] the directory {escape(str(parent))} does not exist")
        raise typer.Exit(EXIT_BAD_INPUT)
    spec = SimulationSpec(claims, seed, start, days or a_year_from(start))
    try:
        registry = read_registry(offices, time=at(start, 0, 0))
    except RegistryFileError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if not registry.ok:
        _print_problems(err, offices, registry, action="nothing was written")
        raise typer.Exit(EXIT_BAD_INPUT)
    began = monotonic()
    with _progress(out) as progress:
        task = progress.add_task("Simulating business days", total=spec.days)
        try:
            counts = write_log(
                simulate(spec, registry.events, lambda _day: progress.advance(task)), out_file
            )
        except (OSError, ValueError) as exc:
            err.print(f"[bold red]error:[/] writing {escape(str(out_file))} failed: {exc}")
            raise typer.Exit(1) from None
    table = Table(title=f"Events in {escape(str(out_file))}", title_justify="left")
    table.add_column("type")
    table.add_column("events", justify="right")
    for etype, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(etype, str(n))
    table.add_row("[bold]total[/]", f"[bold]{sum(counts.values())}[/]")
    out.print(table)
    out.print(
        f"{claims} claims from {spec.start} to {spec.end} ({spec.days} days, seed {seed}) "
        f"written in {monotonic() - began:.1f} s. Replay it with: "
        f"idt replay {escape(str(out_file))}"
    )


# ---------------------------------------------------------------- idt replay


@app.command("replay")
def replay_command(
    file: Annotated[
        Path,
        typer.Argument(
            help="A JSON-lines log: one CloudEvent per line (e.g. from `idt simulate`).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    redis_url: Annotated[
        str, typer.Option("--redis-url", envvar=REDIS_ENV, show_envvar=True, help="Redis URL.")
    ] = DEFAULT_REDIS_URL,
    batch: Annotated[
        int, typer.Option("--batch", min=1, max=100_000, help="XADDs per pipeline round trip.")
    ] = 500,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=0,
            metavar="SECONDS",
            help="How long to wait for every consumer group to drain (0: check once).",
        ),
    ] = 600.0,
) -> None:
    """Publish every event of FILE to its stream, then wait until every consumer
    group reading those streams has drained it.

    Every line is validated by the contract first: one bad line and nothing is
    published (exit code 2, each bad line named). Each line's bytes go unchanged
    into the `__data__` field of an entry on `idt:<type>`. Exits 1 when a group
    has not drained within --timeout, naming it."""
    out, err = _out(), _err()
    size = file.stat().st_size
    with _progress(out, speed=True) as progress:
        task = progress.add_task("Validating", total=size)
        checked = replay_log.scan(file, lambda n: progress.advance(task, n))
    if not checked.ok:
        n = checked.error_count
        err.print(
            f"[bold red]error:[/] {escape(str(file))}: {n} bad line{'s' if n != 1 else ''}; "
            "nothing was published"
        )
        for problem in checked.errors:
            err.print(f"  {escape(str(problem))}")
        if n > len(checked.errors):
            err.print(f"  ... and {n - len(checked.errors)} more")
        raise typer.Exit(EXIT_BAD_INPUT)
    if checked.events == 0:
        err.print(f"[bold red]error:[/] {escape(str(file))} has no events; nothing was published")
        raise typer.Exit(EXIT_BAD_INPUT)
    try:
        client = connect(redis_url)
    except RedisUnavailable as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))} (nothing was published)")
        raise typer.Exit(1) from None
    try:
        began = monotonic()
        with _progress(out) as progress:
            task = progress.add_task("Publishing", total=checked.events)
            try:
                last_ids = replay_log.publish(
                    client, checked, batch=batch, on_events=lambda n: progress.advance(task, n)
                )
            except replay_log.LogChanged as exc:
                err.print(f"[bold red]error:[/] {escape(str(exc))}")
                raise typer.Exit(EXIT_BAD_INPUT) from None
            except redis.RedisError as exc:
                done = int(progress.tasks[0].completed)
                err.print(
                    f"[bold red]error:[/] publishing failed after {done} of {checked.events} "
                    f"events: {escape(str(exc))}"
                )
                raise typer.Exit(1) from None
        published_in = max(monotonic() - began, 1e-9)
        _print_published(out, checked, last_ids, redis_url, published_in)
        began = monotonic()
        with _progress(out) as progress:
            task = progress.add_task("Waiting for the consumer groups", total=None)

            def on_poll(state: replay_log.DrainState) -> None:
                done = len(state.groups) - len(state.lagging)
                progress.update(task, total=len(state.groups), completed=done)

            try:
                state = replay_log.wait_drained(client, last_ids, timeout, on_poll)
            except redis.RedisError as exc:
                err.print(f"[bold red]error:[/] reading the consumer groups failed: {exc}")
                raise typer.Exit(1) from None
        waited = monotonic() - began
    finally:
        client.close()
    for stream in state.unread:
        err.print(
            f"[yellow]warning:[/] no consumer group reads {escape(stream)} yet; its events "
            "wait there for the first service that reads it"
        )
    if not state.drained:
        err.print(
            f"[bold red]error:[/] {len(state.lagging)} consumer group(s) had not drained after "
            f"{timeout:g} s:"
        )
        for g in state.lagging:
            err.print(f"  {escape(str(g))}")
        raise typer.Exit(1)
    groups: dict[str, int] = {}
    for g in state.groups:
        groups[g.group] = groups.get(g.group, 0) + 1
    names = ", ".join(f"{name} ({n} stream{'s' if n != 1 else ''})" for name, n in groups.items())
    out.print(
        f"Drained in {waited:.1f} s: {len(state.groups)} consumer group(s) on "
        f"{len(last_ids)} stream(s) read everything: {escape(names) or 'none'}"
    )


def _print_published(
    out: Console,
    checked: replay_log.Scan,
    last_ids: dict[str, bytes],
    redis_url: str,
    seconds: float,
) -> None:
    table = Table(title="Published", title_justify="left")
    table.add_column("type")
    table.add_column("events", justify="right")
    for etype, n in sorted(checked.types.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(etype, str(n))
    table.add_row("[bold]total[/]", f"[bold]{checked.events}[/]")
    out.print(table)
    out.print(
        f"Published {checked.events} events to {len(last_ids)} stream(s) at "
        f"{escape(redact_url(redis_url))} in {seconds:.2f} s "
        f"({checked.events / seconds:,.0f} events/s)"
    )


# ---------------------------------------------------------------- idt scores


class Level(StrEnum):
    jobcentre = "jobcentre"
    district = "district"
    region = "region"
    national = "national"


class Basis(StrEnum):
    measured = "measured"
    policy = "policy"


SCORING_URL = f"http://127.0.0.1:{BY_NAME['scoring'].default_port}"


@app.command("scores")
def scores_command(
    period: Annotated[
        str | None,
        typer.Option(
            "--period",
            metavar="PERIOD",
            help="A month YYYY-MM or FYyyyy-yy (default: the current business month).",
        ),
    ] = None,
    level: Annotated[Level, typer.Option("--level", case_sensitive=False)] = Level.national,
    basis: Annotated[Basis, typer.Option("--basis", case_sensitive=False)] = Basis.measured,
    url: Annotated[
        str,
        typer.Option(
            "--url", envvar="IDT_SCORING_URL", show_envvar=True, help="The scoring service."
        ),
    ] = SCORING_URL,
) -> None:
    """Show the IDT scores of a period at a level on a basis: per scope and
    element the counts, the rate with its 95% Wilson interval and the target,
    and the overall score (the mean of the element rates present)."""
    out, err = _out(), _err()
    try:
        payload = fetch_scores(url, period, level.value, basis.value)
    except ScoresError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_BAD_INPUT if exc.bad_input else 1) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("rows"), list):
        err.print(f"[bold red]error:[/] unexpected answer from {escape(url)}: {payload!r:.300}")
        raise typer.Exit(1)
    if not payload["rows"]:
        out.print(
            f"No window outcomes in {escape(str(payload.get('period')))} "
            f"at {level.value} level on the "
            f"{basis.value} basis (business date {payload.get('as_of') or 'none yet'})."
        )
        return
    out.print(scores_table(payload))
