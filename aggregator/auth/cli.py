"""``secagg user ...`` (page logins) and ``secagg token ...`` (API tokens for scripts)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from aggregator.auth.roles import ROLE_NAMES, Role
from aggregator.config import AggregatorConfig, load_aggregator_config
from appcommon.cli import config_option
from appcommon.configfile import ConfigError

if TYPE_CHECKING:  # the store needs the aggregator extra: imported where a command runs
    from aggregator.store import Connection


def _load(config_path: Path) -> AggregatorConfig:
    try:
        config = load_aggregator_config(config_path)[0]
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    from aggregator.cli import refuse_incomplete_store

    refuse_incomplete_store(config)
    return config


@contextmanager
def _writing(config_path: Path) -> Iterator[Connection]:
    """A transaction on the store (migrated first: a new install has no tables yet)."""
    from aggregator import store

    config = _load(config_path)
    try:
        store.migrate(config.store.target)
        conn = store.connect(config.store.target)
    except (store.StoreUnavailable, store.DatabaseError) as exc:
        raise click.ClickException(f"{config.store.where}: {exc}") from exc
    try:
        with store.transaction(conn):
            yield conn
    finally:
        conn.close()


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


ROLE = click.Choice(ROLE_NAMES)


@click.group()
def user() -> None:
    """Logins to the review pages: add, list, change a password, remove."""


@user.command("add")
@config_option("aggregator")
@click.argument("name")
@click.option("--role", type=ROLE, required=True, help="viewer, operator or admin")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="read the password from standard input (else it is asked for, or generated)",
)
@click.option("--generate", is_flag=True, help="generate a password and print it once")
def user_add(config_path: Path, name: str, role: str, password_stdin: bool, generate: bool) -> None:
    """Add a user who logs in to the pages with a password (stored as an argon2id hash)."""
    from aggregator.auth import accounts

    password = _password(password_stdin=password_stdin, generate=generate)
    with _writing(config_path) as conn:
        try:
            accounts.add_user(conn, name=name, role=Role.parse(role), password=password)
        except accounts.AccountError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"user {name} added ({role})")
    if generate:
        click.echo(f"password: {password}")


def _password(*, password_stdin: bool, generate: bool) -> str:
    from aggregator.auth import accounts

    if generate:
        return accounts.generated_password()
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    value: str = click.prompt("password", hide_input=True, confirmation_prompt=True)
    return value


@user.command("passwd")
@config_option("aggregator")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@click.option("--generate", is_flag=True, help="generate a password and print it once")
def user_passwd(config_path: Path, name: str, password_stdin: bool, generate: bool) -> None:
    """Change a user's password (their sessions stay; remove and add the user to end them)."""
    from aggregator.auth import accounts

    password = _password(password_stdin=password_stdin, generate=generate)
    with _writing(config_path) as conn:
        try:
            accounts.set_password(conn, name=name, password=password)
        except accounts.AccountError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"password of {name} changed")
    if generate:
        click.echo(f"password: {password}")


@user.command("list")
@config_option("aggregator")
def user_list(config_path: Path) -> None:
    """List the users and their roles."""
    from aggregator import store

    with _writing(config_path) as conn:
        users = store.access.list_users(conn)
    click.echo(f"{'name':<24} {'role':<9} created (UTC)")
    for u in users:
        click.echo(f"{u.name:<24} {u.role:<9} {_when(u.created_ts)}")


@user.command("remove")
@config_option("aggregator")
@click.argument("name")
def user_remove(config_path: Path, name: str) -> None:
    """Remove a user; their sessions end at once."""
    from aggregator import store

    with _writing(config_path) as conn:
        if not store.access.remove_user(conn, name):
            raise click.ClickException(f"no user {name!r}")
    click.echo(f"user {name} removed")


@click.group()
def token() -> None:
    """API tokens for scripts (Authorization: Bearer ...): create, list, revoke."""


@token.command("create")
@config_option("aggregator")
@click.option("--name", required=True, help="what uses it (grafana, backup-script, ...)")
@click.option("--role", type=ROLE, required=True, help="viewer, operator or admin")
def token_create(config_path: Path, name: str, role: str) -> None:
    """Make a token and print it once (only its sha256 is stored)."""
    from aggregator.auth import accounts

    with _writing(config_path) as conn:
        try:
            made = accounts.create_token(conn, name=name, role=Role.parse(role))
        except accounts.AccountError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"token {made.id} ({name}, {role}); it is shown this once:", err=True)
    click.echo(made.token)


@token.command("list")
@config_option("aggregator")
@click.option("--all", "show_all", is_flag=True, help="revoked tokens too")
def token_list(config_path: Path, show_all: bool) -> None:
    """List tokens: id, name, role, the first characters, when made and revoked."""
    from aggregator import store

    with _writing(config_path) as conn:
        rows = store.access.list_tokens(conn, revoked=show_all)
    click.echo(f"{'id':>4} {'name':<20} {'role':<9} {'starts':<9} {'created':<20} revoked")
    for t in rows:
        click.echo(
            f"{t.id:>4} {t.name:<20} {t.role:<9} {t.hint + '…':<9} {_when(t.created_ts):<20} "
            f"{_when(t.revoked_ts)}"
        )


@token.command("revoke")
@config_option("aggregator")
@click.argument("token_id", type=int)
def token_revoke(config_path: Path, token_id: int) -> None:
    """Revoke a token by its id: its next request gets 401."""
    from aggregator import store

    with _writing(config_path) as conn:
        if not store.access.revoke_token(conn, token_id, now_ts=time.time()):
            raise click.ClickException(f"no token {token_id}, or revoked already")
    click.echo(f"token {token_id} revoked")


COMMANDS = (user, token)
