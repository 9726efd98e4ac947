"""gRPC server plumbing shared by the LedgerService and the GovernanceService.

Both services are reachable by anyone on their port, so both are built the same
defensive way here:

* **One owner per port.** gRPC enables ``SO_REUSEPORT`` by default, which lets
  a second server bind a port already in use and silently split the
  connections between two processes (two databases). :func:`new_server` turns
  it off and :func:`bind` refuses a port in use, and a port other than the one
  asked for, with :class:`OSError`.
* **Bounded requests.** ``grpc.max_receive_message_length`` is set per service,
  so an oversized request is refused (RESOURCE_EXHAUSTED) before it is parsed.
* **Prompt shutdown.** :func:`serve_until_signalled` waits for SIGINT or SIGTERM,
  stops the server with a short grace, and if a handler thread is still busy
  after that (a client's expensive call), exits the process anyway rather than
  wait for it: the services keep no state in memory that a stop could lose,
  and every write is one database transaction.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures

import grpc

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 2.0
"""How long in-flight calls get to finish when a server stops."""
DEFAULT_LINGER_S = 5.0
"""How long, after the server stopped, a CLI waits for busy handler threads before exiting anyway."""


MAX_DETAILS = 1000
"""Characters of an error status's details (they travel as metadata, which gRPC caps at 8 KiB)."""


def details(error: BaseException | str) -> str:
    """An error message fit to be a status's details: at most :data:`MAX_DETAILS` characters (requests are echoed in errors)."""
    text = str(error)
    return text if len(text) <= MAX_DETAILS else text[: MAX_DETAILS - 15] + "... (truncated)"


def new_server(*, workers: int, thread_name: str, max_receive_bytes: int) -> tuple[grpc.Server, futures.ThreadPoolExecutor]:
    """A gRPC server with ``workers`` handler threads, no port sharing, and requests capped at ``max_receive_bytes``.

    Returns the server and its thread pool: :func:`stop_server` stops both.
    """
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", max_receive_bytes),
    ]
    executor = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name)
    return grpc.server(executor, options=options), executor


def stop_server(server: grpc.Server, executor: futures.ThreadPoolExecutor, grace: float | None) -> None:
    """Stop serving (in-flight calls get ``grace`` seconds, then are cancelled) and let idle handler threads exit.

    A handler still busy after the grace keeps its thread until it returns
    (Python cannot interrupt it); :func:`exit_when_idle` bounds that wait.
    """
    server.stop(grace).wait()
    executor.shutdown(wait=False, cancel_futures=True)


def bind(server: grpc.Server, host: str, port: int, credentials: grpc.ServerCredentials | None = None) -> int:
    """Listen on ``host:port`` (port 0: any free one) and return the bound port; :class:`OSError` if that fails.

    Fails when the port is in use (also by another process: port sharing is
    off), when the address is not local, and when gRPC bound another port than
    the one asked for.
    """
    address = f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, credentials) if credentials is not None else server.add_insecure_port(address)
    except RuntimeError as e:  # recent grpcio raises on bind failure; older versions return 0
        raise OSError(f"cannot listen on {address}: the port is in use or the address is not local ({e})") from e
    if bound == 0:
        raise OSError(f"cannot listen on {address}: the port is in use or the address is not local")
    if port != 0 and bound != port:
        raise OSError(f"asked to listen on {address} but gRPC bound port {bound}; refusing")
    return bound


def wait_for_signal(signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> signal.Signals:
    """Block the main thread until one of ``signals`` arrives; returns it (the previous handlers are restored)."""
    received: list[signal.Signals] = []
    arrived = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum))
        arrived.set()

    previous = {sig: signal.signal(sig, _handler) for sig in signals}
    try:
        while not arrived.wait(0.5):  # short waits: the handler runs between them even on platforms that defer it
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0]


def exit_when_idle(code: int = 0, linger_s: float = DEFAULT_LINGER_S) -> None:
    """Return once no other non-daemon thread runs; after ``linger_s`` seconds, end the process with ``code`` instead.

    A stopped gRPC server cancels its calls but cannot stop a handler thread in
    the middle of its work, and Python waits for such threads at exit.
    """
    deadline = time.monotonic() + linger_s
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    busy = [t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if busy:
        log.warning("exiting with %d handler thread(s) still busy: %s", len(busy), ", ".join(busy))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve_until_signalled(
    stop: Callable[[float], None], *, grace_s: float = DEFAULT_GRACE_S, linger_s: float = DEFAULT_LINGER_S
) -> signal.Signals:
    """Wait for SIGINT/SIGTERM, then ``stop(grace_s)`` and exit promptly (see :func:`exit_when_idle`); returns the signal."""
    received = wait_for_signal()
    stop(grace_s)
    exit_when_idle(0, linger_s)
    return received
