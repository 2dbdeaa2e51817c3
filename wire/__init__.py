"""The MQTT wire contract shared by the agent and the aggregator (topic layout v1).

Both sides import this package; neither imports the other.
"""

from wire.payloads import (
    SCHEMA_EVENT,
    SCHEMA_STATUS,
    SCHEMA_THREAT,
    SCHEMA_THREAT_V1,
    DetectionOut,
    EventMessage,
    FrameRef,
    PayloadError,
    ReceiptMessage,
    Refusal,
    SnapshotRef,
    StatusMessage,
    ThreatFields,
    ThreatMessage,
    ThreatMessageV1,
    ThreatOut,
    Versions,
    parse_payload,
)
from wire.topics import Topics

__all__ = [
    "SCHEMA_EVENT",
    "SCHEMA_STATUS",
    "SCHEMA_THREAT",
    "SCHEMA_THREAT_V1",
    "DetectionOut",
    "EventMessage",
    "FrameRef",
    "PayloadError",
    "ReceiptMessage",
    "Refusal",
    "SnapshotRef",
    "StatusMessage",
    "ThreatFields",
    "ThreatMessage",
    "ThreatMessageV1",
    "ThreatOut",
    "Topics",
    "Versions",
    "parse_payload",
]
