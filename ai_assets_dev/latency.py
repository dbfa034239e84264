"""A TCP proxy on 127.0.0.1 that adds latency, for benchmarks against a "remote" database.

Each chunk the client sends waits ``delay`` seconds before it is forwarded; replies pass at
once. A request/response protocol such as PostgreSQL's thus pays ``delay`` once per round trip.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator


def _pump(source: socket.socket, target: socket.socket, delay: float) -> None:
    try:
        while chunk := source.recv(65536):
            if delay:
                time.sleep(delay)
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


def _serve(listener: socket.socket, port: int, delay: float, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            client, _ = listener.accept()
        except OSError:
            return
        server = socket.create_connection(("127.0.0.1", port))
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_pump, args=(client, server, delay), daemon=True).start()
        threading.Thread(target=_pump, args=(server, client, 0.0), daemon=True).start()


@contextlib.contextmanager
def latency_proxy(port: int, delay: float) -> Iterator[int]:
    """A proxy to 127.0.0.1:``port`` adding ``delay`` seconds per round trip; yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stop = threading.Event()
    thread = threading.Thread(
        target=_serve, args=(listener, port, delay, stop), daemon=True, name="latency-proxy"
    )
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(5)
