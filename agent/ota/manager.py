"""The agent's update loop: it follows the desired state the aggregator publishes (retained, on
``secagent/v1/<agent>/ota``) and takes each release through

    downloading -> verifying -> staged -> switching -> active -> committed

or ``failed(reason)`` (never used) / ``rolled_back(reason)`` (used, then the last known good
restored). Each state is persisted (:mod:`agent.ota.state`) before the next step and reported
on ``ota/report``. A model or rules switch happens between two frames
(:meth:`agent.engine.DetectionEngine.switch`); a config switch restarts the process into it.
During probation (``ota.probation_s``) inference errors and latency are watched (crash loops at
start: :mod:`agent.ota.boot`); a breach rolls back on its own and says why.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.active import ActiveSet
from agent.config import load_agent_config
from agent.ota import reports, software, verify
from agent.ota.boot import CRASH_AT_ENV
from agent.ota.client import ReleaseClient, ReleaseRefused, SignedRelease
from agent.ota.state import Installed, StateFile
from appcommon.version import code_version
from modelrt import Detections, Detector, DetectorError, ManifestError, load_manifest
from modelrt.rules import RulesError, load_rules
from wire.ota import DesiredRelease, OtaDesired
from wire.payloads import PayloadError, parse_payload

if TYPE_CHECKING:
    from agent.engine import Admitted
    from agent.loader import LoadedAgent
    from agent.pipeline import Agent

log = logging.getLogger(__name__)


def version_tuple(version: str) -> tuple[int, ...]:
    """``0.1.0+gabc.dirty`` -> (0, 1, 0): the release part of a version, to compare."""
    head = version.split("+", 1)[0]
    return tuple(int(p) for p in re.findall(r"[0-9]+", head)[:4])


TURN_S = 0.5
QUIET_WAIT_S = 2.0
"""How long a candidate's load or trial inference waits for the detection worker to be idle."""
RESTART_EXIT_CODE = 75
"""EX_TEMPFAIL: ``secagent run`` exits with it to be started again into a new release."""
FIRST_FRAME_WAIT_S = 5.0
SUFFIX = {"model": ".onnx", "rules": ".yaml", "config": ".yaml", "agent": ".whl"}


class OtaManager:
    def __init__(self, agent: Agent, loaded: LoadedAgent) -> None:
        self.agent = agent
        self.config = agent.config.ota
        self.agent_id = agent.agent_id
        self.states = StateFile(self.config.state_dir)
        self.state = self.states.load()
        self.releases_dir = self.config.state_dir / "releases"
        self._latest: OtaDesired | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ota", daemon=True)
        self.restart_into: Path | None = None
        """Set when a config release is active: ``secagent run`` restarts into it."""
        self.exit_code: int | None = None
        """Set when an agent release was switched to: ``secagent run`` exits with it, and the
        service manager starts the new release through deploy/secagent-launch."""
        self.shadow: Any = None
        self._crash_at = os.environ.get(CRASH_AT_ENV)
        self._next_check = 0.0
        self.refusals: dict[str, int] = {}

    # called by other threads -------------------------------------------------------------------
    def on_desired(self, raw: bytes) -> None:
        if not raw:
            return
        try:
            desired = parse_payload(raw, OtaDesired)
        except PayloadError as exc:
            log.warning("agent=%s ota: desired state refused (%s)", self.agent_id, exc)
            return
        if desired.agent_id != self.agent_id:
            log.warning("agent=%s ota: desired state is for %s", self.agent_id, desired.agent_id)
            return
        with self._lock:
            self._latest = desired
        self._wake.set()

    def on_frame(self, admitted: Admitted, detections: Detections) -> None:
        shadow = self.shadow
        if shadow is not None:
            shadow.offer(admitted, detections)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        if self.shadow is not None:
            self.shadow.stop()

    # the loop ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._send_reports()
                self._watch_trial()
                self._watch_probation()
                with self._lock:
                    desired = self._latest
                now = time.monotonic()
                if desired is not None and (
                    desired.generation != self.state.generation or now >= self._next_check
                ):
                    self._next_check = now + self.config.check_interval_s
                    self._apply(desired)
                if self.shadow is not None:
                    self._report_shadow()
            except Exception:
                log.exception("agent=%s ota: this turn failed; trying again", self.agent_id)
            self._wake.wait(TURN_S)
            self._wake.clear()

    def _save(self, step: str | None = None) -> None:
        self.states.save(self.state)
        if step is not None and step == self._crash_at:
            log.error("agent=%s ota: %s=%s: SIGKILL now", self.agent_id, CRASH_AT_ENV, step)
            os.kill(os.getpid(), signal.SIGKILL)

    def _report(self, **fields: Any) -> None:
        reports.queue(self.state, agent_id=self.agent_id, baseline=self._baseline(), **fields)

    def _base_dir(self) -> Path:
        """The installed config's folder: a config release's relative paths start there."""
        if self.agent.base_dir is not None:
            return self.agent.base_dir
        return (self.agent.config_path or Path("config.yaml")).resolve().parent

    def _baseline(self) -> dict[str, dict[str, Any]]:
        """The model and rules in use now, as the active map of a report (no release id)."""
        active = self.agent.active
        return {
            "model": {"release_id": None, "sha256": active.detector.sha256, "tag": None},
            "rules": {"release_id": None, "sha256": active.rules.sha256, "tag": None},
        }

    def _send_reports(self) -> None:
        link = self.agent.link
        if not self.state.reports or not link.connected.is_set():
            return
        from wire.ota import OtaReport

        baseline = self._baseline()  # for reports queued before the agent ran (at boot)
        while self.state.reports:
            doc = dict(self.state.reports[0])
            doc["active"] = {**baseline, **doc["active"]}
            try:
                payload = OtaReport.model_validate(doc).model_dump_json(by_alias=True).encode()
            except ValueError as exc:
                log.error("agent=%s ota: report dropped, invalid: %s", self.agent_id, exc)
                self.state.reports.pop(0)
                continue
            info = link.client.publish(link.topics.ota_report, payload, qos=1)
            try:
                info.wait_for_publish(5.0)
            except (RuntimeError, ValueError):
                return
            if not info.is_published():
                return
            self.state.reports.pop(0)
            self.states.save(self.state)

    # desired state -----------------------------------------------------------------------------
    def _apply(self, desired: OtaDesired) -> None:
        for kind in desired.revert:
            if kind in self.state.active:
                self._go_back(
                    kind,
                    reason="the desired state reverts it",
                    state_name="active",
                    desired=desired,
                )
        order = {"model": 0, "rules": 1, "config": 2, "agent": 3}
        for entry in sorted(desired.releases, key=lambda r: order[r.kind]):
            if entry.mode == "active":
                self._update(entry, desired)
        shadow_entry = next((r for r in desired.releases if r.mode == "shadow"), None)
        self._set_shadow(shadow_entry, desired)
        if self.state.generation != desired.generation:
            self.state.generation = desired.generation
            self._save()

    def _update(self, entry: DesiredRelease, desired: OtaDesired) -> None:
        kind = entry.kind
        active = self.state.active.get(kind)
        if active is not None and active.release_id == entry.release_id:
            return
        if str(entry.release_id) in self.state.refused:
            return
        ids = {
            "kind": kind,
            "release_id": entry.release_id,
            "rollout_id": desired.rollout_id,
            "generation": desired.generation,
        }
        try:
            path, signed = self._fetch(entry, ids)
            self._step("verifying", ids)
            installed, switch = self._verify(signed, path)
            self._step("staged", ids)
            self._step("switching", ids)
            switch(installed, ids)
        except ReleaseRefused as refused:
            self._fail(ids, refused)

    def _step(self, name: str, ids: dict[str, Any], reason: str | None = None) -> None:
        self.state.update = {**ids, "state": name, "since": time.time()}
        self._report(state_name=name, reason=reason, **ids)
        log.info(
            "agent=%s ota: %s release %s: %s", self.agent_id, ids["kind"], ids["release_id"], name
        )
        self._save(name)

    def _fail(self, ids: dict[str, Any], refused: ReleaseRefused) -> None:
        self.refusals[refused.reason] = self.refusals.get(refused.reason, 0) + 1
        self.state.update = None
        self.state.refused[str(ids["release_id"])] = f"{refused.reason}: {refused.detail}"
        self._report(state_name="failed", reason=f"{refused.reason}: {refused.detail}", **ids)
        log.error(
            "agent=%s ota: %s release %s refused: %s",
            self.agent_id,
            ids["kind"],
            ids["release_id"],
            refused,
        )
        self._save()

    def _fetch(self, entry: DesiredRelease, ids: dict[str, Any]) -> tuple[Path, SignedRelease]:
        self._step("downloading", ids)
        client = ReleaseClient(self.config, agent_id=self.agent_id)
        client.refresh()
        signed = client.lookup(target_path=entry.target_path, sha256=entry.sha256, kind=entry.kind)
        needed = signed.compat.get("min_agent")
        if isinstance(needed, str) and version_tuple(code_version()) < version_tuple(needed):
            raise ReleaseRefused(
                "incompatible_agent",
                f"it needs agent version {needed} or newer; this agent is {code_version()}",
            )
        active = self.state.active.get(entry.kind)
        good = self.state.last_good.get(entry.kind)
        if (
            active is not None
            and signed.seq < active.seq
            and not (good is not None and good.release_id == signed.release_id)
        ):
            raise ReleaseRefused(
                "downgrade",
                f"{entry.kind} release {signed.release_id} (seq {signed.seq}) is older than the "
                f"active release {active.release_id} (seq {active.seq}); add the old content "
                "again as a new release to go back to it",
            )
        folder = self.releases_dir / entry.kind / signed.sha256
        dest = folder / f"{entry.kind}{SUFFIX[entry.kind]}"
        if entry.kind == "agent":  # pip wants a wheel's own file name: <release id>-<name>
            dest = folder / entry.target_path.rsplit("/", 1)[1].split("-", 1)[1]
        if not dest.is_file():
            client.download(signed, dest)
        return dest, signed

    # verification and switching ----------------------------------------------------------------
    def _verify(self, signed: SignedRelease, path: Path) -> tuple[Installed, Any]:
        agent = self.agent
        installed = Installed(
            signed.release_id, signed.kind, signed.tag, signed.seq, signed.sha256, str(path)
        )
        if signed.kind == "model":
            manifest = verify.write_manifest(signed, path)
            installed.path = str(manifest)
            frames = list(agent.engine.recent)[-self.config.verify_frames :]
            detector, trial = verify.verify_model(
                manifest,
                config=agent.config,
                rules=agent.rules,
                frames=frames,
                quiet=lambda: agent.engine.wait_quiet(QUIET_WAIT_S),
            )
            log.info(
                "agent=%s ota: model release %d tried on %d frame(s): %.1f ms a frame",
                self.agent_id,
                signed.release_id,
                trial.frames,
                trial.mean_ms,
            )
            return installed, lambda inst, ids: self._switch(inst, ids, detector=detector)
        if signed.kind == "rules":
            rules = verify.verify_rules(path, config=agent.config, detector=agent.detector)
            return installed, lambda inst, ids: self._switch(inst, ids, rules=rules)
        if signed.kind == "config":
            verify.verify_config(path, agent_id=self.agent_id, base_dir=self._base_dir())
            return installed, self._switch_config
        if signed.kind == "agent" and self.config.software_prefix is not None:
            prefix = self.config.software_prefix
            version = software.wheel_version(path)
            release = software.install(
                path, prefix=prefix, version=version, pip_args=self.config.software_pip_args
            )
            verify.verify_software(release)
            installed.path = f"releases/{version}"
            return installed, self._switch_software
        raise ReleaseRefused(
            "unsupported", f"{signed.kind} releases are not installed by this agent"
        )

    def _switch(
        self,
        installed: Installed,
        ids: dict[str, Any],
        *,
        detector: Detector | None = None,
        rules: Any = None,
        state_name: str = "active",
        reason: str | None = None,
    ) -> None:
        current = self.agent.active
        kind = installed.kind
        new = self._active_set(
            current,
            detector=detector,
            rules=rules,
            releases={**current.releases, kind: installed.describe()},
        )
        if not self.agent.engine.switch(new.detector, new):
            raise ReleaseRefused("switch_timeout", "the detection worker did not take the switch")
        new.first_frame.wait(FIRST_FRAME_WAIT_S)
        self.state.last_good[kind] = self.state.active.get(kind)
        self.state.active[kind] = installed
        self.state.update = {**ids, "state": state_name, "since": time.time()}
        self.state.probation = {**ids, "since": time.time(), "starts": []}
        self._report(state_name=state_name, reason=reason, frame_id=new.first_frame_id, **ids)
        log.info(
            "agent=%s ota: %s release %s active from frame %s",
            self.agent_id,
            kind,
            installed.release_id,
            new.first_frame_id,
        )
        self._save(state_name)
        self._cleanup()

    def _active_set(
        self,
        current: ActiveSet,
        *,
        detector: Detector | None = None,
        rules: Any = None,
        releases: dict[str, dict[str, object]],
    ) -> ActiveSet:
        det = detector or current.detector
        rul = rules or current.rules
        versions = current.versions.model_copy(
            update={"model_sha256": det.sha256, "rules_sha256": rul.sha256}
        )
        return ActiveSet(det, rul, versions, releases)

    def _switch_config(self, installed: Installed, ids: dict[str, Any]) -> None:
        self.state.last_good["config"] = self.state.active.get("config")
        self.state.active["config"] = installed
        self.state.update = {**ids, "state": "active", "since": time.time()}
        self.state.probation = {**ids, "since": time.time(), "starts": []}
        self._report(state_name="active", reason="restarting into the new config", **ids)
        self._save("active")
        self.restart_into = Path(installed.path)
        self.agent.stop()

    def _switch_software(self, installed: Installed, ids: dict[str, Any]) -> None:
        """Switch ``current`` to the new release under a trial, then stop: the service manager
        starts it through deploy/secagent-launch, which takes it back if it does not come up."""
        prefix = self.config.software_prefix
        assert prefix is not None
        self.state.last_good["agent"] = self.state.active.get("agent")
        self.state.active["agent"] = installed
        self.state.update = {**ids, "state": "switching", "since": time.time()}
        self._save()
        software.begin_trial(
            prefix,
            candidate=installed.path,
            release_id=installed.release_id,
            attempts=self.config.software_attempts,
            deadline_s=self.config.software_health_deadline_s,
        )
        log.info(
            "agent=%s ota: restarting into agent release %d (%s)",
            self.agent_id,
            installed.release_id,
            installed.path,
        )
        self.exit_code = RESTART_EXIT_CODE
        self.agent.stop()

    def _watch_trial(self) -> None:
        """The new agent release's first run: up once it reported itself active (the broker
        acknowledged it); then the trial ends and probation begins. Past the deadline it takes
        itself back."""
        update = self.state.update
        prefix = self.config.software_prefix
        if prefix is None or update is None or update.get("kind") != "agent":
            return
        if update.get("state") != "switching":
            return
        trial = software.read_trial(prefix)
        ids = {k: update.get(k) for k in ("kind", "release_id", "rollout_id", "generation")}
        if trial is None or trial.release_id != update.get("release_id"):
            return
        if time.time() > trial.deadline:
            software.abandon(prefix, trial, "not up before the deadline")
            self.exit_code = RESTART_EXIT_CODE
            self.agent.stop()
            return
        if not self.agent.link.connected.is_set():
            return
        reported = any(
            r["state"] == "active" and r["release_id"] == trial.release_id
            for r in self.state.reports
        )
        if not reported:
            self._report(state_name="active", reason="the new release is up", **ids)
            self._save()
        self._send_reports()
        if self.state.reports:
            return  # not acknowledged yet
        software.commit(prefix)
        self.state.update = {**ids, "state": "active", "since": time.time()}
        self.state.probation = {**ids, "since": time.time(), "starts": []}
        self._save()
        log.info(
            "agent=%s ota: agent release %s is up; trial over, probation begins",
            self.agent_id,
            trial.release_id,
        )

    # probation and rollback --------------------------------------------------------------------
    def _watch_probation(self) -> None:
        probation = self.state.probation
        if probation is None:
            return
        kind = probation["kind"]
        engine = self.agent.engine
        ids = {k: probation.get(k) for k in ("kind", "release_id", "rollout_id", "generation")}
        if kind == "model":
            if engine.inference_errors > self.config.probation_max_errors:
                self._rollback(ids, f"probation: {engine.inference_errors} inference errors")
                return
            latencies = list(engine.latencies_ms)
            if len(latencies) >= 5:
                p95 = float(np.percentile(latencies, 95))
                if p95 > self.config.latency_budget_ms:
                    self._rollback(
                        ids,
                        f"probation: inference p95 {p95:.0f} ms > the latency budget of "
                        f"{self.config.latency_budget_ms:g} ms",
                    )
                    return
        if time.time() - probation["since"] >= self.config.probation_s:
            self.state.probation = None
            self.state.update = None
            self._report(state_name="committed", reason="probation passed", **ids)
            log.info(
                "agent=%s ota: %s release %s committed",
                self.agent_id,
                kind,
                probation["release_id"],
            )
            self._save()

    def _rollback(self, ids: dict[str, Any], reason: str) -> None:
        log.error(
            "agent=%s ota: %s release %s: %s; rolling back",
            self.agent_id,
            ids["kind"],
            ids["release_id"],
            reason,
        )
        self.state.refused[str(ids["release_id"])] = reason
        self.state.probation = None
        self._go_back(ids["kind"], reason=reason, state_name="rolled_back", ids=ids)

    def _go_back(
        self,
        kind: str,
        *,
        reason: str,
        state_name: str,
        ids: dict[str, Any] | None = None,
        desired: OtaDesired | None = None,
    ) -> None:
        """Make the last known good release of ``kind`` active again (none: as installed)."""
        good = self.state.last_good.get(kind) if state_name == "rolled_back" else None
        baseline, _ = load_agent_config(
            self.agent.config_path or Path("."), base_dir=self.agent.base_dir
        )
        try:
            if kind == "model":
                manifest = Path(good.path) if good else baseline.detect.model
                d = self.agent.config.detect
                detector = Detector(
                    load_manifest(manifest),
                    providers=d.providers,
                    intra_op_threads=d.intra_op_threads,
                    inter_op_threads=d.inter_op_threads,
                    max_batch=d.max_batch,
                    spin_wait=d.spin_wait,
                )
                target: dict[str, Any] = {"detector": detector}
            elif kind == "rules":
                target = {"rules": load_rules(Path(good.path) if good else baseline.rules)}
            else:
                target = {}
        except (ManifestError, DetectorError, RulesError) as exc:
            log.error(
                "agent=%s ota: cannot load the last known good %s: %s", self.agent_id, kind, exc
            )
            return
        current = self.agent.active
        releases = dict(current.releases)
        if good is None:
            releases.pop(kind, None)
        else:
            releases[kind] = good.describe()
        new = self._active_set(current, releases=releases, **target)
        if kind in ("model", "rules"):
            self.agent.engine.switch(new.detector, new)
            new.first_frame.wait(FIRST_FRAME_WAIT_S)
        if good is None:
            self.state.active.pop(kind, None)
        else:
            self.state.active[kind] = good
        self.state.update = None
        ids = ids or {
            "kind": kind,
            "release_id": None,
            "rollout_id": desired.rollout_id if desired else None,
            "generation": desired.generation if desired else None,
        }
        self._report(state_name=state_name, reason=reason, frame_id=new.first_frame_id, **ids)
        self._save()
        if kind == "config":
            self.restart_into = Path(good.path) if good else self.agent.config_path
            self.agent.stop()

    def _cleanup(self) -> None:
        """Keep on disk only the releases active or last known good."""
        keep = {
            Path(r.path).parent
            for r in [*self.state.active.values(), *self.state.last_good.values()]
            if r is not None
        }
        for kind_dir in self.releases_dir.glob("*"):
            for folder in kind_dir.glob("*"):
                if folder not in keep:
                    shutil.rmtree(folder, ignore_errors=True)

    # shadow mode (agent/ota/shadow.py) ---------------------------------------------------------
    def _set_shadow(self, entry: DesiredRelease | None, desired: OtaDesired) -> None:
        if entry is None:
            if self.shadow is not None:
                self._report_shadow(force=True)
                self.shadow.stop()
                self.shadow = None
            return
        if self.shadow is not None and self.shadow.release_id == entry.release_id:
            return
        if str(entry.release_id) in self.state.refused:
            return
        from agent.ota.shadow import ShadowRunner

        ids = {
            "kind": "model",
            "release_id": entry.release_id,
            "rollout_id": desired.rollout_id,
            "generation": desired.generation,
        }
        try:
            path, signed = self._fetch(entry, ids)
            self._step("verifying", ids)
            installed, _ = self._verify(signed, path)
            detector = Detector(
                load_manifest(Path(installed.path)), providers=self.agent.config.detect.providers
            )
        except ReleaseRefused as refused:
            self._fail(ids, refused)
            return
        self.state.update = None
        self._report(state_name="shadow", reason=f"fraction {entry.shadow_fraction:g}", **ids)
        self._save("shadow")
        if self.shadow is not None:
            self.shadow.stop()
        self.shadow = ShadowRunner(
            self.agent,
            detector,
            release_id=entry.release_id,
            fraction=entry.shadow_fraction,
            ids=ids,
        )
        self.shadow.start()

    def _report_shadow(self, *, force: bool = False) -> None:
        figures = self.shadow.figures_if_due(force=force)
        if figures is None:
            return
        self._report(state_name="shadow_report", shadow=figures, **self.shadow.ids)
        self._save()
