"""``secagg ota``, ``secagg release``, ``secagg rollout`` and ``secagg history``: keys and the
signed repository, releases, staged rollouts and what each agent ran when (docs/ota.md)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from aggregator.config import AggregatorConfig, load_aggregator_config
from appcommon.cli import config_option
from appcommon.configfile import ConfigError


def _load(config_path: Path) -> AggregatorConfig:
    try:
        config, _ = load_aggregator_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    from aggregator.cli import refuse_incomplete_store

    refuse_incomplete_store(config)
    return config


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.group()
def ota() -> None:
    """Keys and the signed release repository."""


@ota.command("init")
@config_option("aggregator")
@click.option(
    "--keys",
    "keys_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="folder for the offline root and targets keys (keep it off the aggregator)",
)
def ota_init(config_path: Path, keys_dir: Path) -> None:
    """Make the keys and version 1 of the signed release repository.

    Writes root.pem and targets.pem (offline keys) and root.json (what agents trust: copy it
    to each agent as ota.trusted_root) into --keys; the online key and the token secret go
    where the config's ota section says. Then set ota.enabled and restart secagg serve.
    """
    from aggregator.ota.releases import ReleaseError, init_repository

    config = _load(config_path)
    try:
        result = init_repository(config, keys_dir=keys_dir)
    except ReleaseError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"repository {config.ota.repo_dir} initialised")
    click.echo(f"offline keys: {keys_dir}/root.pem, {keys_dir}/targets.pem")
    click.echo(f"agents trust: {result.root_file} (ota.trusted_root in secagent.yaml)")


@ota.command("token")
@config_option("aggregator")
@click.argument("agent_id")
def ota_token(config_path: Path, agent_id: str) -> None:
    """Print AGENT_ID's download token (ota.token_file in its secagent.yaml)."""
    from aggregator.ota import tokens
    from wire.topics import TopicError, check_agent_id

    config = _load(config_path)
    try:
        check_agent_id(agent_id)
        click.echo(tokens.token_for(tokens.read_secret(config.ota.token_secret_file), agent_id))
    except (TopicError, tokens.TokenError) as exc:
        raise click.ClickException(str(exc)) from exc


@ota.command("rotate-key")
@config_option("aggregator")
@click.argument("role", type=click.Choice(["root", "targets", "snapshot", "timestamp"]))
@click.option(
    "--root-key",
    "root_keys",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="a current root key (repeat; for ROLE root, the new root key too)",
)
@click.option(
    "--add",
    "add_key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="key to add to ROLE (made when the file does not exist)",
)
@click.option("--revoke", "revoke_keyid", help="key id to remove from ROLE")
def ota_rotate_key(
    config_path: Path,
    role: str,
    root_keys: tuple[Path, ...],
    add_key: Path | None,
    revoke_keyid: str | None,
) -> None:
    """Sign a new root version that adds a key to ROLE and/or revokes one.

    Rotation is two steps: --add the new key (the root lists both; sign with the new one from
    now on), then, once every agent has the new root, --revoke the old one.
    """
    from aggregator.ota.repository import Repository, RepositoryError, generate_key, load_key

    config = _load(config_path)
    try:
        signers = [load_key(p) for p in root_keys]
        added = None
        if add_key is not None:
            added = load_key(add_key) if add_key.exists() else generate_key(add_key)
            if role == "root":
                signers.append(added)
        Repository(config.ota.repo_dir).rotate(
            role,
            add=added,
            revoke_keyid=revoke_keyid,
            root_signers=signers,
            root_expiry_s=config.ota.root_expiry_s,
        )
    except RepositoryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"root version {Repository(config.ota.repo_dir).root().signed.version} signed")


@click.group()
def release() -> None:
    """Signed releases: models, rules files, agent configs, agent software."""


@release.command("add")
@config_option("aggregator")
@click.argument("kind", type=click.Choice(["model", "rules", "config", "agent"]))
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tag", help="release tag (default: git describe --always --dirty of FILE's repo)")
@click.option(
    "--targets-key",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="the offline targets key (targets.pem from secagg ota init)",
)
@click.option(
    "--min-agent",
    help="the oldest agent version that can use it (e.g. 0.2); older agents refuse it",
)
def release_add(
    config_path: Path,
    kind: str,
    file: Path,
    tag: str | None,
    targets_key: Path,
    min_agent: str | None,
) -> None:
    """Check FILE as a KIND release, store it by sha256 and sign it into the repository.

    KIND model: FILE is a model manifest naming its ONNX file (loaded, layout recognised).
    rules: a rules file. config: an agent config. agent: a secagent wheel. Prints the release.
    """
    from aggregator.ota.releases import ReleaseError, add_release

    config = _load(config_path)
    try:
        row = add_release(
            config, kind=kind, path=file, tag=tag, targets_key=targets_key, min_agent=min_agent
        )
    except ReleaseError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        json.dumps(
            {
                "id": row.id,
                "kind": row.kind,
                "name": row.name,
                "tag": row.tag,
                "sha256": row.sha256,
                "size": row.size,
                "seq": row.seq,
                "target_path": row.target_path,
                "compat": row.compat,
            }
        )
    )


@release.command("list")
@config_option("aggregator")
@click.option("--kind", type=click.Choice(["model", "rules", "config", "agent"]))
def release_list(config_path: Path, kind: str | None) -> None:
    """List releases, newest first."""
    from aggregator import store

    config = _load(config_path)
    conn = _store(config)
    try:
        rows = store.releases.list_releases(conn, kind=kind)
    finally:
        conn.close()
    click.echo(f"{'id':>4} {'kind':<7} {'seq':>4} {'tag':<20} {'created':<19} sha256")
    for r in rows:
        click.echo(
            f"{r.id:>4} {r.kind:<7} {r.seq:>4} {r.tag:<20} {_when(r.created_ts):<19} "
            f"{r.sha256[:16]}…"
        )


def _store(config: AggregatorConfig) -> Any:
    from aggregator import store

    try:
        store.migrate(config.store.target)
        return store.connect(config.store.target)
    except (store.StoreUnavailable, store.DatabaseError) as exc:
        raise click.ClickException(f"{config.store.where}: {exc}") from exc


@click.command()
@config_option("aggregator")
@click.argument("agent_id")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def history(config_path: Path, agent_id: str, as_json: bool) -> None:
    """Which release of each kind AGENT_ID had active when, and its update reports."""
    from aggregator import store
    from aggregator.ota.history import periods

    config = _load(config_path)
    conn = _store(config)
    try:
        reports = store.ota.reports(conn, agent_id, limit=10_000)
    finally:
        conn.close()
    spans = periods(reports)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "periods": [p.__dict__ for p in spans],
                    "reports": [r.__dict__ for r in reports],
                },
                default=str,
            )
        )
        return
    click.echo(f"{'kind':<7} {'release':>7} {'sha256':<18} {'since':<19} until")
    for p in spans:
        rel = "-" if p.release_id is None else str(p.release_id)
        click.echo(
            f"{p.kind:<7} {rel:>7} {(p.sha256 or '-')[:16]:<18} {_when(p.since_ts):<19} "
            f"{_when(p.until_ts) if p.until_ts else 'now'}"
        )
    click.echo("")
    for r in reports:
        click.echo(
            f"{_when(r.at_ts)} {r.kind or '-':<7} release {r.release_id or '-':>4} "
            f"{r.state:<12} {r.reason or ''}"
        )


@click.group()
def rollout() -> None:
    """Staged rollouts of a release to agents, in groups."""


@rollout.command("create")
@config_option("aggregator")
@click.argument("release_id", type=int)
@click.option("--agents", help="comma-separated agent ids")
@click.option("--label", help="every agent whose config lists this label under ota.labels")
@click.option("--groups", default="1,*", show_default=True, help="group sizes: N, N% or *")
@click.option(
    "--shadow",
    "shadow_fraction",
    type=click.FloatRange(0, 1, min_open=True),
    help="run the model in shadow mode on this fraction of frames",
)
@click.option(
    "--success-threshold",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="share of a group that must succeed before the next one starts",
)
@click.option(
    "--error-threshold",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="share of failed agents (of those started) that halts the rollout",
)
def rollout_create(
    config_path: Path,
    release_id: int,
    agents: str | None,
    label: str | None,
    groups: str,
    shadow_fraction: float | None,
    success_threshold: float,
    error_threshold: float,
) -> None:
    """Roll RELEASE_ID out to agents by list or label, group by group (secagg serve acts)."""
    from aggregator import store
    from aggregator.ota import rollouts

    config = _load(config_path)
    conn = _store(config)
    try:
        with store.transaction(conn):
            chosen = [a.strip() for a in (agents or "").split(",") if a.strip()]
            if label:
                chosen += rollouts.agents_with_label(conn, label)
            rollout_id = rollouts.create(
                conn,
                release_id=release_id,
                agents=chosen,
                groups=groups,
                mode="shadow" if shadow_fraction else "active",
                shadow_fraction=shadow_fraction or 1.0,
                success_threshold=success_threshold,
                error_threshold=error_threshold,
                now_ts=time.time(),
            )
            doc = rollouts.summary(conn, rollout_id)
    except rollouts.RolloutError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        conn.close()
    click.echo(json.dumps(doc))


@rollout.command("status")
@config_option("aggregator")
@click.argument("rollout_id", type=int, required=False)
def rollout_status(config_path: Path, rollout_id: int | None) -> None:
    """One rollout with its groups and agents (JSON), or every rollout."""
    from aggregator import store
    from aggregator.ota import rollouts

    config = _load(config_path)
    conn = _store(config)
    try:
        if rollout_id is None:
            for r in store.rollouts.list_rollouts(conn):
                click.echo(
                    f"{r.id:>4} release {r.release_id:>4} {r.mode:<7} {r.state:<10} "
                    f"group {r.current_group} {r.reason or ''}"
                )
            return
        click.echo(json.dumps(rollouts.summary(conn, rollout_id), indent=2))
    except rollouts.RolloutError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        conn.close()


def _act(config_path: Path, rollout_id: int, action: str) -> None:
    from aggregator import store
    from aggregator.ota import rollouts

    config = _load(config_path)
    conn = _store(config)
    try:
        with store.transaction(conn):
            row = rollouts.act(conn, rollout_id, action, now_ts=time.time())
    except rollouts.RolloutError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        conn.close()
    click.echo(f"rollout {row.id}: {row.state} ({row.mode})")


for _action, _help in (
    ("promote", "Shadow rollout: make the candidate active, group by group. Active: all now."),
    ("abort", "Stop, and give every agent it reached its previous release back."),
    ("pause", "Hold the rollout where it is."),
    ("resume", "Go on with a paused or halted rollout."),
):

    def _command(config_path: Path, rollout_id: int, _a: str = _action) -> None:
        _act(config_path, rollout_id, _a)

    _command.__doc__ = _help
    rollout.command(_action)(
        click.argument("rollout_id", type=int)(config_option("aggregator")(_command))
    )


@rollout.command("compare")
@config_option("aggregator")
@click.argument("rollout_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def rollout_compare(config_path: Path, rollout_id: int, as_json: bool) -> None:
    """The shadow comparison of a rollout's candidate model, per agent, camera and label."""
    from aggregator.ota import shadow

    config = _load(config_path)
    conn = _store(config)
    try:
        doc = shadow.compare(conn, rollout_id)
    except shadow.ShadowError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        conn.close()
    click.echo(json.dumps(doc, indent=2) if as_json else shadow.render(doc))


COMMANDS = (ota, release, rollout, history)
