"""``secagg``: the central aggregator."""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from aggregator.config import AggregatorConfig, load_aggregator_config
from appcommon.cli import config_option, log_format_option, log_level_option, setup_logging
from appcommon.configfile import ConfigError

if TYPE_CHECKING:  # the store needs the aggregator extra: imported where a command runs
    from aggregator import store

log = logging.getLogger("aggregator")


def _load(config_path: Path) -> AggregatorConfig:
    try:
        config, _ = load_aggregator_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    refuse_incomplete_store(config)
    return config


def refuse_incomplete_store(config: AggregatorConfig) -> None:
    """Every command refuses a PostgreSQL store while the backend is incomplete."""
    from aggregator.store.schema import BackendIncomplete, require_complete

    try:
        require_complete(config.store.target)
    except BackendIncomplete as exc:
        raise click.ClickException(str(exc)) from exc


AGGREGATOR_MODULES = (
    "sqlite_utils",
    "fastapi",
    "fastapi_offline",
    "uvicorn",
    "httpx",
    "matplotlib",
    "jinja2",
    "argon2",
    "prometheus_client",
)
"""What the ``aggregator`` extra installs; a camera host installs only the agent's."""


@click.group()
@click.version_option(package_name="secagent")
def main() -> None:
    """secagg: collects threats from secagent agents, groups them into events, serves the API."""
    missing = [m for m in AGGREGATOR_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(
            f"secagg needs the aggregator extra (missing: {', '.join(missing)}): "
            "pip install 'secagent[aggregator,cpu]'"
        )


def freeze_startup_objects() -> None:
    """What exists once the service is built (the modules, the app, the config) lives as long
    as the process: move it out of the cyclic garbage collector's way (``gc.freeze``). Each
    full collection would scan it all again, about 150,000 objects: 35-43 µs of every stored
    message."""
    gc.collect()  # what is garbage already is not kept for ever
    gc.freeze()


@main.command()
@config_option("aggregator")
@log_level_option
@log_format_option
@click.option(
    "--role",
    type=click.Choice(["all", "ingest", "api"]),
    default="all",
    show_default=True,
    help="all: everything in one process; ingest: an ingest worker (threats on the shared "
    "subscription, no API); api: the API, statuses, the sweep, OTA (one per site)",
)
@click.option(
    "--worker",
    default=None,
    help="the ingest worker's name (--role ingest): it connects as <client_id>-<worker>",
)
@click.option(
    "--http-workers",
    type=click.IntRange(0, 64),
    default=0,
    show_default=True,
    help="more processes answering the API's port beside this one (--role all or api): one "
    "Python process answers one request at a time (docs/scale.md)",
)
def serve(
    config_path: Path,
    log_level: str,
    log_format: str,
    role: str,
    worker: str | None,
    http_workers: int,
) -> None:
    """Ingest threats from MQTT and serve the REST API until SIGINT/SIGTERM.

    Under systemd (Type=notify) it says READY=1 once the store is migrated and the API listens
    (an ingest worker: once subscribed), pings the watchdog while the store writer turns and the
    API answers, and on SIGTERM stores what it holds, checkpoints the database and exits 0.
    Many processes on one store: one ``--role api`` and any number of ``--role ingest --worker
    NAME`` (docs/scale.md). ``--http-workers N`` starts N more processes that answer the same
    port (the API and the pages only; they stop with this one).
    """
    from aggregator import roles, store
    from aggregator.service import Service, ServiceError

    setup_logging(log_level, log_format)
    config = _load(config_path)
    role_of: roles.Role = "ingest" if role == "ingest" else "api" if role == "api" else "all"
    try:
        roles.check(role_of, worker)
    except roles.RoleError as exc:
        raise click.UsageError(str(exc)) from exc
    if http_workers and role_of == "ingest":
        raise click.UsageError(
            "--http-workers is for --role all or api: an ingest worker serves no API"
        )
    try:
        service = Service(
            config,
            log_level=log_level,
            log_format=log_format,
            role=role_of,
            worker=worker,
            http_workers=http_workers,
            config_path=config_path,
        )
        freeze_startup_objects()
        service.run()
    except (ServiceError, store.StoreUnavailable, store.DatabaseError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@config_option("aggregator")
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="the backup file to write (replaced atomically)",
)
def backup(config_path: Path, out_path: Path) -> None:
    """Copy the store to a backup file while secagg runs (SQLite's online backup), checked.

    Restore by stopping secagg and copying the file back to store.path (what was stored after
    the backup is not in it).
    """
    from aggregator import store

    config = _load(config_path)
    if config.store.is_postgres:
        raise click.ClickException(
            f"{config.store.where}: secagg backup copies a SQLite store; back up PostgreSQL with "
            "its own tools (pg_dump, or the server's continuous archiving)"
        )
    try:
        size = store.backup(config.store.path, out_path)
    except (store.StoreUnavailable, store.DatabaseError, OSError) as exc:
        raise click.ClickException(f"backup of {config.store.path} failed: {exc}") from exc
    click.echo(f"ok: {config.store.path} -> {out_path} ({size} bytes, quick_check ok)")


@main.command("check-config")
@config_option("aggregator")
def check_config(config_path: Path) -> None:
    """Validate a config file and print the settings it resolves to."""
    config = _load(config_path)
    click.echo(f"ok: {config_path}")
    settings = config.model_dump(mode="json", exclude={"mqtt": {"password"}})
    if config.store.url is not None:  # a PostgreSQL URL may hold a password
        settings["store"]["url"] = (
            config.store.where if config.store.is_postgres else config.store.url
        )
    for notifier in settings["notify"]["notifiers"]:  # secrets: shown as set, never printed
        if notifier.get("password") is not None:
            notifier["password"] = "***"
        if notifier.get("headers"):
            notifier["headers"] = dict.fromkeys(notifier["headers"], "***")
    click.echo(json.dumps(settings, indent=2))


@main.command()
@config_option("aggregator")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--event", "event_id", type=int, default=None, help="only this event's")
def notifications(config_path: Path, limit: int, event_id: int | None) -> None:
    """List the latest notifications (newest first): event, notifier, kind, state, attempts."""
    from aggregator import store

    config = _load(config_path)
    try:
        conn = store.connect(config.store.target, readonly=True)
        try:
            rows = store.notifications.list_notifications(conn, limit=limit, event_id=event_id)
        finally:
            conn.close()
    except (store.StoreUnavailable, store.DatabaseError) as exc:
        raise click.ClickException(f"{config.store.where}: {exc}") from exc
    click.echo(
        f"{'id':>6} {'event':>6} {'notifier':<12} {'kind':<7} {'for':<18} {'state':<10} "
        f"{'tries':>5}  last error"
    )
    for r in rows:
        click.echo(
            f"{r.id:>6} {r.event_id:>6} {r.notifier:<12} {r.kind:<7} "
            f"{r.state_key:<18} {r.state:<10} {r.attempts:>5}  {r.last_error or ''}"
        )


@main.command("broker-config")
@click.option(
    "--spec",
    "spec_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="deployment spec (YAML): agents, readers, listener, TLS files",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="folder for mosquitto.conf, passwd, acl and credentials.yaml (and sites/<name>/ "
    "with the same four files for each site broker of the spec)",
)
def broker_config(spec_path: Path, out_dir: Path) -> None:
    """Write a Mosquitto config for a deployment: an account and ACL per agent, no anonymous.

    Re-run it after adding an agent to the spec: existing passwords are kept. Then reload
    Mosquitto (systemctl reload mosquitto) and give the agent its password.

    With ``sites`` in the spec, each site broker's files go to OUT/sites/<name>/: its agents'
    accounts and ACL, and a bridge to this (central) broker with a persistent queue, which logs
    in as bridge-<name>, an account here allowed only that site's agents' topics.
    """
    from aggregator.broker_config import (
        BrokerConfigError,
        load_spec,
        site_dir,
        write_broker_config,
    )

    try:
        spec = load_spec(spec_path)
        creds = write_broker_config(spec, out_dir)
    except (ConfigError, BrokerConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"wrote {out_dir}/mosquitto.conf, passwd, acl, credentials.yaml ({len(creds)} accounts)"
    )
    for site in spec.sites:
        click.echo(f"wrote {site_dir(out_dir, site.name)}/ for site {site.name}")


def _read_db(config: AggregatorConfig) -> store.Connection:
    from aggregator import store

    if not config.store.is_postgres and not config.store.path.exists():
        raise click.ClickException(f"no store at {config.store.path}")
    try:
        store.migrate(config.store.target)  # an older store gets the lineage tables (backfilled)
        return store.connect(config.store.target, readonly=True)
    except (store.StoreUnavailable, store.DatabaseError) as exc:
        raise click.ClickException(f"{config.store.where}: {exc}") from exc


@main.command()
@config_option("aggregator")
@click.argument("artifact")
@click.option("--json", "as_json", is_flag=True, help="print the graph as JSON (nodes, edges)")
@click.option(
    "--downstream", is_flag=True, help="what came of the artifact instead of where it came from"
)
def explain(config_path: Path, artifact: str, as_json: bool, downstream: bool) -> None:
    """Print the lineage of an event, notification or plot as a tree.

    ARTIFACT is an artifact id (event:12, notification:3, plot:<sha256>, model:<sha256>,
    frame:<sha256>, ...); a bare number means an event. A content-addressed id may be cut to a
    unique prefix of its key (model:eee43d6844).
    """
    import json

    from aggregator import lineage, provenance

    config = _load(config_path)
    artifact_id = f"event:{artifact}" if artifact.isdigit() else artifact
    conn = _read_db(config)
    try:
        graph = lineage.graph(
            conn, artifact_id, direction="downstream" if downstream else "upstream"
        )
    except provenance.ProvenanceError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        conn.close()
    click.echo(json.dumps(graph.as_dict(), indent=2) if as_json else lineage.render_tree(graph))


@main.command()
@config_option("aggregator")
@click.argument("event_id", type=int)
@click.option(
    "--frames-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="folder holding the original stills or videos (looked up by file name)",
)
@click.option(
    "--snapshots-only",
    is_flag=True,
    help="re-run on the stored snapshots even where the original video or file is here",
)
@click.option(
    "--provider",
    "providers",
    multiple=True,
    default=["CPUExecutionProvider"],
    show_default=True,
    help="ONNX Runtime execution provider (repeat for a fallback order)",
)
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def reproduce(
    config_path: Path,
    event_id: int,
    frames_dir: Path | None,
    snapshots_only: bool,
    providers: tuple[str, ...],
    as_json: bool,
) -> None:
    """Re-run the recorded model and rules on an event's frames and compare the detections.

    Exit status 0 when every frame matches (exactly, or within the tolerance for re-encoded
    frames), 1 when a frame differs or its model, rules or frame is missing.
    """
    import json

    from aggregator.reproduce import ReproduceError, format_report, reproduce_event
    from modelrt import DetectorError

    config = _load(config_path)
    conn = _read_db(config)
    try:
        report = reproduce_event(
            conn,
            event_id,
            config=config.reproduce,
            snapshots_dir=config.store.snapshots_dir,
            frames_dir=frames_dir,
            use_originals=not snapshots_only,
            providers=list(providers),
        )
    except (ReproduceError, DetectorError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        conn.close()
    if as_json:
        doc = {
            "event_id": report.event_id,
            "ok": report.ok,
            "iou_min": report.iou_min,
            "score_delta_max": report.score_delta_max,
            "frames": [f.as_dict() for f in report.frames],
            "notes": report.notes,
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(format_report(report))
    if not report.ok:
        raise SystemExit(1)


@main.command()
@config_option("aggregator")
@click.argument("kind", type=click.Choice(["threats_per_hour", "events_by_label", "timeline"]))
@click.option("--since", type=click.DateTime(), help="from this capture time (UTC)")
@click.option("--until", type=click.DateTime(), help="before this capture time (UTC)")
@click.option("--camera", help="only this camera")
@click.option("--agent", "agent_id", help="only this agent")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="also copy the PNG here"
)
def plot(
    config_path: Path,
    kind: str,
    since: object,
    until: object,
    camera: str | None,
    agent_id: str | None,
    out: Path | None,
) -> None:
    """Draw a plot of the stored data and record it with its provenance.

    KIND: threats_per_hour (stacked by camera), events_by_label (stacked by severity) or
    timeline. Prints the plot id (plot:<sha256 of the PNG>) and where the PNG is.
    """
    from aggregator import plots, store
    from appcommon.version import code_version

    config = _load(config_path)
    if not config.store.is_postgres and not config.store.path.exists():
        raise click.ClickException(f"no store at {config.store.path}")
    store.migrate(config.store.target)
    conn = store.connect(config.store.target)
    try:
        query = plots.PlotQuery.model_validate(
            {"kind": kind, "since": since, "until": until, "camera": camera, "agent_id": agent_id}
        )
        row = plots.make_plot(
            conn, query, plots_dir=config.store.plots_dir, code_version=code_version()
        )
    except plots.PlotError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        conn.close()
    path = plots.plot_path(config.store.plots_dir, row.id)
    if out is not None:
        out.write_bytes(path.read_bytes())
    click.echo(f"plot:{row.id} {path} ({len(row.event_ids)} event(s))")


def _add_ota_commands() -> None:
    from aggregator.auth.cli import COMMANDS as AUTH_COMMANDS
    from aggregator.ota.cli import COMMANDS

    for command in (*COMMANDS, *AUTH_COMMANDS):
        main.add_command(command)


_add_ota_commands()


@main.command()
@config_option("aggregator")
@click.option("--event", "event_id", type=int, help="everything logged about this event")
@click.option("--lineage", "lineage_id", help="... about this lineage (one frame's runs)")
@click.option("--frame", "frame_id", help="... about this frame")
@click.option("--agent", "agent_id", help="an agent's lines (with --since/--until)")
@click.option("--since", type=click.DateTime(), help="with --agent: from this time (UTC)")
@click.option("--until", type=click.DateTime(), help="with --agent: before this time (UTC)")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def logs(
    config_path: Path,
    event_id: int | None,
    lineage_id: str | None,
    frame_id: str | None,
    agent_id: str | None,
    since: object,
    until: object,
    limit: int,
    as_json: bool,
) -> None:
    """The warnings and errors the agents and secagg logged about a result, oldest first.

    With --event: about the event, its messages, their lineages and frames; --lineage or
    --frame: about one frame's runs; --agent: an agent's lines in a time range.
    """
    from datetime import UTC, datetime

    from aggregator import store
    from aggregator.api.routes.logs import line_public, lines_about_event

    def ts(value: object) -> float | None:
        if not isinstance(value, datetime):
            return None
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()

    if not (event_id or lineage_id or frame_id or agent_id):
        raise click.UsageError("say what about: --event, --lineage, --frame or --agent")
    config = _load(config_path)
    conn = _read_db(config)
    try:
        if event_id is not None:
            rows = lines_about_event(conn, event_id, limit=limit)
        elif lineage_id or frame_id:
            rows = store.logs.about(
                conn,
                lineage_ids=[lineage_id] if lineage_id else [],
                frame_ids=[frame_id] if frame_id else [],
                limit=limit,
            )
        else:
            assert agent_id is not None
            rows = store.logs.of_agent(
                conn, agent_id, since_ts=ts(since), until_ts=ts(until), limit=limit
            )
    finally:
        conn.close()
    for row in rows:
        if as_json:
            click.echo(line_public(row).model_dump_json())
            continue
        where = f"{row.source}:{row.agent_id}" if row.agent_id else row.source
        click.echo(
            f"{datetime.fromtimestamp(row.at_ts, UTC):%Y-%m-%d %H:%M:%S} {where:<20} "
            f"{row.level:<8} {row.msg}"
        )
    if not rows:
        click.echo("nothing logged about it", err=True)
