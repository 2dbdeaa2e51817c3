"""A Mosquitto configuration for a deployment: one account per agent, an ACL that confines each
agent to its own topics, an aggregator account, optional read-only accounts for third-party
subscribers, a TLS listener, anonymous access off.

``secagg broker-config --spec site.yaml --out DIR`` writes ``mosquitto.conf``, ``passwd``
(hashed by ``mosquitto_passwd``), ``acl`` and ``credentials.yaml`` (the plain passwords, mode
0600, kept across runs so that re-running after adding an agent changes no existing password).

A spec with ``sites`` also writes, for each site, ``DIR/sites/<name>/`` with the same four files
for that site's own broker: its agents' accounts and ACL, and a bridge to the central broker
(a persistent queue, QoS 1 both ways) that logs in there with the site's bridge account,
``bridge-<name>``, whose central ACL allows only that site's agents' topics.
"""

from __future__ import annotations

import grp
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from appcommon.configfile import load_yaml_model
from wire.topics import AGENT_ID_PATTERN, PREFIX, Topics


class BrokerConfigError(RuntimeError):
    """The broker files cannot be written (mosquitto_passwd missing or failing)."""


class TlsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    cafile: Path = Field(description="CA certificate that signed the server certificate")
    certfile: Path = Field(description="server certificate (PEM)")
    keyfile: Path = Field(description="server private key (PEM)")


LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ListenerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str = Field("0.0.0.0", description="address the broker listens on")
    port: int = Field(8883, ge=1, le=65535, description="TCP port (8883 = MQTT over TLS)")
    tls: TlsSpec | None = Field(None, description="TLS files; leave out only on loopback")
    allow_plaintext: bool = Field(
        False,
        description="allow a listener without tls on an address other than loopback (passwords "
        "and threats then cross the network readable by anyone on it)",
    )

    @model_validator(mode="after")
    def _no_plaintext_on_the_network(self) -> ListenerSpec:
        if self.tls is None and self.host not in LOOPBACK and not self.allow_plaintext:
            raise ValueError(
                f"a listener on {self.host} without tls sends passwords and threats in plain "
                "text: add tls, bind it to 127.0.0.1, or set allow_plaintext: true"
            )
        return self


class CentralSpec(BaseModel):
    """Where a site broker finds the central broker."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str = Field(description="the central broker's address as the site host reaches it")
    port: int = Field(8883, ge=1, le=65535, description="its TCP port")
    cafile: Path | None = Field(
        None,
        description="on the site host, the CA that signed the central broker's certificate "
        "(required unless the central listener has no tls)",
    )


class SiteSpec(BaseModel):
    """A site broker: its agents publish to it, and it bridges their topics to the central
    broker."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(
        pattern=AGENT_ID_PATTERN, description="site name; its bridge account is bridge-<name>"
    )
    listener: ListenerSpec = Field(description="where the site broker listens")
    central: CentralSpec = Field(description="how the site broker reaches the central broker")
    agents: list[str] = Field(min_length=1, description="agent ids of this site")
    persistence_dir: Path = Field(
        Path("/var/lib/mosquitto/"),
        description="where the site broker keeps sessions and the bridge's queue",
    )
    run_as: str | None = Field(None, description="OS user the site's Mosquitto drops to")
    autosave_interval_s: int = Field(
        60,
        ge=1,
        le=3600,
        description="seconds between saves of the site broker's queue to disk (what a crash "
        "of the site broker can lose; the agents send it again from their outboxes)",
    )
    max_queued_messages: int = Field(
        100_000,
        ge=1000,
        description="messages the site broker queues for the central link while it is down",
    )
    max_queued_bytes: int = Field(
        1024**3,
        ge=1024**2,
        description="bytes the site broker queues for the central link while it is down",
    )

    @field_validator("agents")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            Topics(name)
        return names

    @property
    def bridge_user(self) -> str:
        return f"bridge-{self.name}"


class DeploymentSpec(BaseModel):
    """``site.yaml``: who may connect to the (central) broker, and the site brokers bridged to
    it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    listener: ListenerSpec = Field(description="where the broker listens (TLS unless loopback)")
    persistence_dir: Path = Field(
        Path("/var/lib/mosquitto/"), description="where Mosquitto keeps sessions and queues"
    )
    run_as: str | None = Field(
        None,
        description="OS user Mosquitto drops to when started as root (default: the package's, "
        "'mosquitto'); it must be able to read passwd and acl and write persistence_dir",
    )
    autosave_interval_s: int = Field(
        60,
        ge=1,
        le=3600,
        description="seconds between saves of sessions and queues to disk (a crash loses what "
        "changed since: the agents send again what has no receipt)",
    )
    aggregator_user: str = Field(
        "secagg", pattern=AGENT_ID_PATTERN, description="the aggregator's account"
    )
    agents: list[str] = Field(
        default_factory=list,
        description="agent ids connecting to this broker; each gets its own account",
    )
    ingest_workers: list[str] = Field(
        default_factory=list,
        description="names of secagg ingest workers (secagg serve --role ingest --worker NAME); "
        "each gets the account <aggregator_user>-<name> with the aggregator's password, allowed "
        "to take threats and send receipts and event changes",
    )
    readers: list[str] = Field(
        default_factory=list,
        description="read-only accounts (home automation, SOC) for events and agent status",
    )
    sites: list[SiteSpec] = Field(
        default_factory=list,
        description="site brokers bridged to this one, each with its own agents",
    )

    @field_validator("agents", "readers", "ingest_workers")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            Topics(name)  # raises for an id that cannot be one topic level
        return names

    @model_validator(mode="after")
    def _some_agent(self) -> DeploymentSpec:
        if not self.agents and not self.sites:
            raise ValueError("agents: list at least one agent (here or under a site)")
        return self

    @model_validator(mode="after")
    def _distinct(self) -> DeploymentSpec:
        names = [site.name for site in self.sites]
        if len(set(names)) != len(names):
            raise ValueError("site names must be distinct")
        everyone = [self.aggregator_user, *self.agents, *self.readers, *self.worker_accounts]
        for site in self.sites:
            everyone += [site.bridge_user, *site.agents]
        dupes = sorted({n for n in everyone if everyone.count(n) > 1})
        if dupes:
            raise ValueError(f"account names must be distinct, repeated: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _bridges_use_tls(self) -> DeploymentSpec:
        for site in self.sites:
            if self.listener.tls is not None and site.central.cafile is None:
                raise ValueError(
                    f"sites.{site.name}.central.cafile: the central listener has tls, so the "
                    "bridge needs the CA file to check it"
                )
        return self

    @property
    def worker_accounts(self) -> list[str]:
        return [f"{self.aggregator_user}-{name}" for name in self.ingest_workers]


HA_STATE = "secagent/ha"
HA_DISCOVERY = "homeassistant"
"""The default Home Assistant prefixes (``homeassistant.state_prefix``/``discovery_prefix``)."""


def acl_text(spec: DeploymentSpec) -> str:
    """The ACL: agents write only under their own id and read only their own ota/receipts."""
    agg = spec.aggregator_user
    lines = [
        "# Generated by `secagg broker-config`. Anything not listed is denied.",
        f"user {agg}",
        f"topic read {PREFIX}/+/threats",
        f"topic read {PREFIX}/+/status",
        f"topic read {PREFIX}/+/ota/report",
        f"topic read {Topics.ALL_LOGS}",
        f"topic write {PREFIX}/+/ota",
        f"topic write {PREFIX}/+/receipts",
        f"topic readwrite {Topics.EVENTS}",
        f"topic write {HA_STATE}/#",  # Home Assistant: availability, state, snapshot
        f"topic write {HA_DISCOVERY}/#",
        "",
    ]
    for worker in spec.worker_accounts:  # an ingest worker's client id is its account too
        lines += [
            f"user {worker}",
            f"topic read {PREFIX}/+/threats",
            f"topic write {PREFIX}/+/receipts",
            f"topic readwrite {Topics.EVENTS}",
            "",
        ]
    for agent in spec.agents:
        lines += [f"user {agent}", *_agent_topics([agent]), ""]
    for site in spec.sites:
        # The bridge writes and reads on behalf of its site's agents, and of nobody else.
        lines += [f"user {site.bridge_user}", *_agent_topics(site.agents), ""]
    for reader in spec.readers:
        lines += [
            f"user {reader}",
            f"topic read {Topics.EVENTS}",
            f"topic read {Topics.ALL_STATUS}",
            f"topic read {HA_STATE}/#",
            f"topic read {HA_DISCOVERY}/#",
            "",
        ]
    return "\n".join(lines)


def _agent_topics(agents: list[str]) -> list[str]:
    """ACL lines that let an account write and read the topics of ``agents`` (an agent's own,
    or a site bridge's for the site's agents)."""
    lines = []
    for agent in agents:
        t = Topics(agent)
        lines += [
            f"topic write {t.threats}",
            f"topic write {t.status}",
            f"topic write {t.ota_report}",
            f"topic write {t.logs}",
            f"topic read {t.ota}",
            f"topic read {t.receipts}",
        ]
    return lines


def site_acl_text(site: SiteSpec) -> str:
    """The site broker's ACL: its agents, each confined to its own topics."""
    lines = [f"# Generated by `secagg broker-config` for site {site.name}. Anything not listed"]
    lines += ["# is denied."]
    for agent in site.agents:
        lines += [f"user {agent}", *_agent_topics([agent]), ""]
    return "\n".join(lines)


def _broker_lines(
    *,
    run_as: str | None,
    out_dir: Path,
    persistence_dir: Path,
    autosave_interval_s: int,
    queue: list[str],
    listener: ListenerSpec,
) -> list[str]:
    lis = listener
    lines = [
        "per_listener_settings false",
        *([f"user {run_as}"] if run_as else []),
        "allow_anonymous false",
        f"password_file {out_dir / 'passwd'}",
        f"acl_file {out_dir / 'acl'}",
        "persistence true",
        f"persistence_location {persistence_dir}/",
        f"autosave_interval {autosave_interval_s}",
        *queue,
        "max_inflight_messages 100",
        "message_size_limit 4194304",
        f"listener {lis.port} {lis.host}",
        # (a listener option) The client id is the account: nobody can connect under another's
        # id (an agent's or the aggregator's) and take its session over.
        "use_username_as_clientid true",
    ]
    if lis.tls is not None:
        lines += [
            f"cafile {lis.tls.cafile}",
            f"certfile {lis.tls.certfile}",
            f"keyfile {lis.tls.keyfile}",
            "tls_version tlsv1.2",
        ]
    return lines


def mosquitto_conf_text(spec: DeploymentSpec, out_dir: Path) -> str:
    lines = [
        "# Generated by `secagg broker-config`.",
        *_broker_lines(
            run_as=spec.run_as,
            out_dir=out_dir,
            persistence_dir=spec.persistence_dir,
            autosave_interval_s=spec.autosave_interval_s,
            queue=["max_queued_messages 1000000"],
            listener=spec.listener,
        ),
    ]
    return "\n".join(lines) + "\n"


BRIDGE_OUT = ("threats", "status", "ota_report", "logs")
BRIDGE_IN = ("receipts", "ota")


def site_conf_text(site: SiteSpec, out_dir: Path, *, bridge_password: str) -> str:
    """The site broker's mosquitto.conf: its listener and agents, and the bridge to central."""
    lines = [
        f"# Generated by `secagg broker-config` for site {site.name}. It holds the bridge's",
        "# password: keep it readable by root and the mosquitto group only.",
        *_broker_lines(
            run_as=site.run_as,
            out_dir=out_dir,
            persistence_dir=site.persistence_dir,
            autosave_interval_s=site.autosave_interval_s,
            # per client, so also the bridge's queue while the central link is down
            queue=[
                f"max_queued_messages {site.max_queued_messages}",
                f"max_queued_bytes {site.max_queued_bytes}",
            ],
            listener=site.listener,
        ),
        "",
        "connection central",
        f"address {site.central.host}:{site.central.port}",
        "bridge_protocol_version mqttv50",
        f"remote_clientid {site.bridge_user}",
        f"remote_username {site.bridge_user}",
        f"remote_password {bridge_password}",
        f"local_clientid {site.bridge_user}.local",
        # A persistent session on both brokers: what the central link misses while it is down
        # waits in the site broker's queue (out) and in the central broker's (in).
        "cleansession false",
        "local_cleansession false",
        "restart_timeout 2 30",
        "notifications true",
        "notifications_local_only true",
        *([f"bridge_cafile {site.central.cafile}"] if site.central.cafile else []),
    ]
    for agent in site.agents:
        t = Topics(agent)
        lines += [f"topic {getattr(t, kind)} out 1" for kind in BRIDGE_OUT]
        lines += [f"topic {getattr(t, kind)} in 1" for kind in BRIDGE_IN]
    return "\n".join(lines) + "\n"


def find_mosquitto_passwd() -> str:
    for candidate in (shutil.which("mosquitto_passwd"), "/usr/bin/mosquitto_passwd"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise BrokerConfigError("mosquitto_passwd not found: apt-get install mosquitto")


def _readable_by_broker_group(path: Path) -> None:
    """As root, give the file to the ``mosquitto`` group so the broker can read it after it
    drops privileges; elsewhere leave it alone."""
    if os.geteuid() != 0:
        return
    try:
        gid = grp.getgrnam("mosquitto").gr_gid
    except KeyError:
        return
    os.chown(path, 0, gid)


def _write_accounts(
    out_dir: Path, accounts: list[str], *, sharing: dict[str, str] | None = None
) -> dict[str, str]:
    """Write credentials.yaml (keeping known passwords) and passwd; return account ->
    password. ``sharing`` maps more accounts to the account whose password they use."""
    out_dir.mkdir(parents=True, exist_ok=True)
    creds_path = out_dir / "credentials.yaml"
    known: dict[str, str] = {}
    if creds_path.exists():
        known = yaml.safe_load(creds_path.read_text()) or {}
    creds = {name: known.get(name) or secrets.token_urlsafe(24) for name in accounts}
    creds |= {name: creds[owner] for name, owner in (sharing or {}).items()}
    fd = os.open(creds_path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# Plain passwords of the broker accounts. Keep this file secret.\n")
        yaml.safe_dump(creds, fh, sort_keys=True)
    creds_path.with_suffix(".tmp").replace(creds_path)
    passwd = out_dir / "passwd"
    tmp = passwd.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    tool = find_mosquitto_passwd()
    for i, (name, password) in enumerate(creds.items()):
        args = [tool, "-b", *(["-c"] if i == 0 else []), str(tmp), name, password]
        done = subprocess.run(args, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise BrokerConfigError(f"mosquitto_passwd failed for {name}: {done.stderr.strip()}")
    os.chmod(tmp, 0o640)
    _readable_by_broker_group(tmp)
    tmp.replace(passwd)
    return creds


def write_broker_config(spec: DeploymentSpec, out_dir: Path) -> dict[str, str]:
    """Write the four files into ``out_dir`` (and each site's into ``out_dir/sites/<name>``);
    return account -> password of the central broker's accounts."""
    accounts = [spec.aggregator_user, *spec.agents, *spec.readers]
    accounts += [site.bridge_user for site in spec.sites]
    # an ingest worker's account is the aggregator's with another name (its client id)
    workers = dict.fromkeys(spec.worker_accounts, spec.aggregator_user)
    creds = _write_accounts(out_dir, accounts, sharing=workers)
    (out_dir / "acl").write_text(acl_text(spec))
    (out_dir / "mosquitto.conf").write_text(mosquitto_conf_text(spec, out_dir.resolve()))
    for site in spec.sites:
        write_site_config(
            site, site_dir(out_dir, site.name), bridge_password=creds[site.bridge_user]
        )
    return creds


def site_dir(out_dir: Path, name: str) -> Path:
    """Where ``write_broker_config`` puts the files of site ``name``."""
    return out_dir / "sites" / name


def write_site_config(site: SiteSpec, out_dir: Path, *, bridge_password: str) -> dict[str, str]:
    """Write a site broker's four files into ``out_dir``; return its agents' passwords."""
    creds = _write_accounts(out_dir, list(site.agents))
    (out_dir / "acl").write_text(site_acl_text(site))
    conf = out_dir / "mosquitto.conf"
    tmp = conf.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as fh:
        fh.write(site_conf_text(site, out_dir.resolve(), bridge_password=bridge_password))
    os.chmod(tmp, 0o640)  # a umask may have taken bits away; the password is in it
    _readable_by_broker_group(tmp)
    tmp.replace(conf)
    return creds


def load_spec(path: Path) -> DeploymentSpec:
    """Load ``site.yaml``; ConfigError with the field path when it is wrong."""
    return load_yaml_model(path, DeploymentSpec)[0]
