"""A TCP proxy between the service and the real broker, to break the network the way production does:
take the broker away, cut every connection, or let connections go silent without closing them."""

from __future__ import annotations

import contextlib
import socket
import threading


class Link:
    """One proxied connection: the client's socket and the broker's, and whether bytes still flow."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.flowing = threading.Event()
        self.flowing.set()

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    """Forwards 127.0.0.1:`port` to the upstream address while up; refuses connections while down."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int = 0) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._links: list[Link] = []
        self._listener: socket.socket | None = None
        if not port:
            probe = socket.create_server(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
        self.port: int = port

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Stop listening and cut every connection, as a broker that died would."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        self.cut()

    def cut(self) -> None:
        """Reset every open connection, as a failed link or a restarted load balancer would; new ones pass."""
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()

    def freeze(self) -> None:
        """Every open connection goes silent, neither forwarding nor closing (a stuck network, a
        dropped NAT entry); new connections pass."""
        with self._lock:
            for link in self._links:
                link.flowing.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            link = Link(client, upstream)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._pump, args=(link, client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(link, upstream, client), daemon=True).start()

    @staticmethod
    def _pump(link: Link, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if link.flowing.is_set():
                    target.sendall(data)
                # else: frozen, the bytes vanish into the stuck network, and nothing closes
        if link.flowing.is_set():
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
