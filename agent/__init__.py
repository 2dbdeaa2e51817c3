"""secagent: the edge daemon (capture, validate, motion gate, detect, rules, outbox, MQTT)."""

from appcommon.version import code_version

__all__ = ["code_version"]
