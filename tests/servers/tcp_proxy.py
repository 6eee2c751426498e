"""A loopback TCP forwarder that can be cut, for "the service is unreachable" faults: `TcpOutageProxy`.

Clients connect to the proxy's port; every connection is forwarded to `target_port`. `cut()` closes the
listening socket and resets every open connection, so new connections are refused and calls in flight fail,
as when the service's host drops off the network, while the service behind keeps its state (moto's buckets
live only in memory). `restore()` listens on the same port again.
"""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType
from typing import Self

from .common import LOOPBACK, free_port


class TcpOutageProxy:
    """Forwards 127.0.0.1:`port` (`uri`) to `target_host`:`target_port`, in this process's threads."""

    def __init__(self, target_port: int, port: int | None = None, target_host: str = LOOPBACK) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.accepted = 0  # connections accepted (all time)
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def uri(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def start(self) -> Self:
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((LOOPBACK, self.port))
        except OSError as exc:
            listener.close()
            raise RuntimeError(f"the outage proxy cannot listen on {LOOPBACK}:{self.port} again: {exc}") from exc
        listener.listen(128)
        listener.settimeout(0.2)
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True,
                                               name=f"tcp-outage-proxy-{self.port}")  # fmt: skip
        self._accept_thread.start()
        return self

    restore = start

    def cut(self) -> None:
        """Stop listening and reset every open connection: the service is unreachable until `restore()`."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
            self._accept_thread = None
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            _reset(conn)

    stop = cut

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                _reset(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    _reset(client)
                    _reset(upstream)
                    return
                self._conns.update((client, upstream))
                self.accepted += 1
            remaining = [2]  # pumps still running for this pair; the last one closes both sockets
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, (client, upstream), remaining),
                                 daemon=True).start()  # fmt: skip

    def _pump(
        self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket], remaining: list[int]
    ) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)
        except OSError:  # reset by a peer or by cut(): drop the whole connection
            for sock in pair:
                _reset(sock)
        with self._lock:
            remaining[0] -= 1
            last = remaining[0] == 0
            if last:
                self._conns.difference_update(pair)
        if last:
            for sock in pair:
                try:
                    sock.close()
                except OSError:
                    pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.cut()


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, as from a host that dropped the connection."""
    for action in (
        lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
        lambda: sock.shutdown(socket.SHUT_RDWR),  # wakes a pump blocked in recv() on it
        sock.close,
    ):
        try:
            action()
        except OSError:
            pass
