"""What durability costs the agent's outbox: ``Outbox.put`` of real-sized threat messages
(96 KiB, most of it the snapshot) per second, side by side in one run, on the disk of ``--dir``:

- ``TRUNCATE + FULL`` (what the agent uses): a commit is in the database file when ``put``
  returns; neither a power cut nor a journal file deleted by hand loses it;
- ``WAL + FULL``: as durable against a power cut, but the last commits live in the ``-wal``
  file until a checkpoint: deleting it after a crash loses them silently;
- ``WAL + NORMAL``: a power cut may lose the last commits.

    python bench/outbox.py [--messages 300] [--dir var/bench]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent import outbox  # noqa: E402

MODES = (("TRUNCATE", "FULL"), ("WAL", "FULL"), ("WAL", "NORMAL"))


def rate(where: Path, *, journal: str, sync: str, messages: int, payload: bytes) -> float:
    outbox.JOURNAL_MODE, outbox.SYNCHRONOUS = journal, sync
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        box = outbox.Outbox(Path(tmp) / "outbox.sqlite", max_bytes=1 << 30)
        began = time.perf_counter()
        for i in range(messages):
            box.put(message_id=f"{i:032x}", topic="secagent/v1/a/threats", payload=payload)
        elapsed = time.perf_counter() - began
        box.close()
    return messages / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--dir", type=Path, default=ROOT / "var" / "bench")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(96 * 1024)
    found = {
        (j, s): rate(args.dir, journal=j, sync=s, messages=args.messages, payload=payload)
        for j, s in MODES
    }
    for (j, s), per_s in found.items():
        print(f"{j:9s} {s:7s} {per_s:8.0f} puts/s  {1000 / per_s:6.2f} ms each")
    used = found[MODES[0]]
    print(
        f"outbox: TRUNCATE+FULL {used:.0f} puts/s = {used / found[MODES[1]]:.2f}x WAL+FULL, "
        f"{used / found[MODES[2]]:.2f}x WAL+NORMAL"
    )


if __name__ == "__main__":
    main()
