"""secagg: the central aggregator (MQTT ingest, SQLite store, threat events, REST API)."""
