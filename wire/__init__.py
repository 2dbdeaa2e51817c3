"""The MQTT wire contract shared by the agent and the aggregator (v1).

Both sides import this package; neither imports the other.
"""

from wire.payloads import (
    SCHEMA_EVENT,
    SCHEMA_STATUS,
    SCHEMA_THREAT,
    DetectionOut,
    EventMessage,
    FrameRef,
    PayloadError,
    ReceiptMessage,
    Refusal,
    StatusMessage,
    ThreatMessage,
    ThreatOut,
    Versions,
    parse_payload,
)
from wire.topics import Topics

__all__ = [
    "SCHEMA_EVENT",
    "SCHEMA_STATUS",
    "SCHEMA_THREAT",
    "DetectionOut",
    "EventMessage",
    "FrameRef",
    "PayloadError",
    "ReceiptMessage",
    "Refusal",
    "StatusMessage",
    "ThreatMessage",
    "ThreatOut",
    "Topics",
    "Versions",
    "parse_payload",
]
