"""Child process for the atomicity tests (run as a script: test modules are not importable from children).

usage: _writer.py append URL KEY_PEM WORKER GO_FILE   -- signal ready, wait for GO_FILE, append 30 entries
       _writer.py crash  URL KEY_PEM                  -- start a 50-entry append and die just before its commit
       _writer.py open   URL KEY_PEM WORKER GO_FILE   -- signal ready, wait for GO_FILE, `Ledger.open` a fresh
                                                         ledger (its key file created if missing), append one
                                                         entry and print the public key it signs with
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from sentinel.ledger.crypto import load_private_key
from sentinel.ledger.entries import AppendRequest
from sentinel.ledger.store import Ledger
from sqlalchemy import event


def _round(i: int) -> AppendRequest:
    return AppendRequest("round_started", "coordinator", {"round": i})


def _wait_for_go(worker: str, go: Path) -> None:
    go.with_name(f"ready-{worker}").touch()  # the parent starts everyone at once, after all are ready
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.002)


def main(mode: str, url: str, key_path: str, *rest: str) -> None:
    if mode == "open":
        _wait_for_go(rest[0], Path(rest[1]))
        with Ledger.open(url, key_path) as opened:
            opened.append("update_accepted", "coordinator", {"node": rest[0], "round": 0})
            print(opened.public_key_b64)
        return
    led = Ledger(url, load_private_key(key_path))
    if mode == "crash":
        event.listen(led.engine, "commit", lambda conn: os._exit(17))  # no cleanup, no rollback: a hard crash
        led.append_many([_round(i) for i in range(50)])
        os._exit(0)
    worker, go = rest[0], Path(rest[1])
    _wait_for_go(worker, go)
    for i in range(10):
        led.append("update_accepted", "coordinator", {"node": worker, "round": i})
        led.append_many([_round(i), _round(i)])
    led.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
