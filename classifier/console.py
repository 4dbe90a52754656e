"""A quiet terminal for long commands: everything goes to a log file, only finsent's own lines reach the screen.

Ray (its controller and placement-group chatter, worker start-up, checkpoint notices), Serve, Kafka clients and
the C++ libraries write to file descriptors 1 and 2 from many processes; Ray relays its workers' output to the
driver's stdout. Inside :func:`quiet_terminal` both descriptors point at a pipe; a thread copies every line to the
log file and forwards to the terminal only the lines worth a user's attention — finsent's own log lines
(``INFO training.finetune: ...``, also from Ray workers, with Ray's ``(RayTrainWorker pid=…)`` prefix removed),
its progress bars and report blocks — so a failure still shows its cause (the command prints the exception and
the log file's path) while Ray internals stay in the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

#: finsent's packages: their log lines are shown
OWN_PACKAGES: tuple[str, ...] = ("finsent", "classifier", "training", "serving", "stream", "labeling", "bench")
#: Ray's prefix on relayed worker output, e.g. ``\x1b[36m(RayTrainWorker pid=123)\x1b[0m ``
_RAY_PREFIX = re.compile(r"^(?:\x1b\[[0-9;]*m)?\((?P<who>[\w.:-]+) pid=\d+(?:, ip=[\d.]+)?\)(?:\x1b\[[0-9;]*m)? ?")
#: who may speak on the terminal when relayed by Ray (the training workers run finsent's code)
_RAY_SOURCES = frozenset({"RayTrainWorker", "_RayTrainWorker", "MapWorker", "ServeReplica", "_ray_actor"})
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: what Ray Train prints inside a worker, between finsent's lines
_RAY_WORKER_NOISE = re.compile(r"^(?:Moving model to device|Wrapping provided model|Checkpoint successfully created|"
                               r"Setting up process group|Reporting training result|Started distributed worker)")


def _own_line(text: str, packages: Iterable[str]) -> bool:
    packages = tuple(packages)
    if not packages:
        return False
    pk = "|".join(re.escape(p) for p in packages)
    # "INFO training.finetune: ..." or, with a process name in the format, "INFO worker-1 stream.runner: ..."
    return re.search(rf"\b(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (?:[\w.-]+ )?(?:{pk})(?:\.[\w.]+)?: ", text) is not None


class LineFilter:
    """Decides which log-file lines also go to the terminal. A line from finsent's loggers opens a block:
    the lines after it without a timestamp (a report table, a confusion matrix) belong to it."""

    _TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d|^\[\d{4}-\d\d-\d\d|^[IWEF]\d{4} ")
    _PROGRESS = re.compile(r"^(?:epoch|step|steps|pretrain|distill|labelling|label)\b.*\|.*\d+/\d+")

    def __init__(self, packages: Iterable[str] = OWN_PACKAGES) -> None:
        self.packages = tuple(packages)
        self._in_block: dict[str, bool] = {}

    def __call__(self, line: str) -> str | None:
        """The text to show for ``line`` (Ray's prefix removed), or None to keep it in the log file only."""
        m = _RAY_PREFIX.match(line)
        who = m.group("who").split(".")[0] if m else "driver"
        text = _ANSI.sub("", line[m.end():] if m else line)
        if m and who not in _RAY_SOURCES or _RAY_WORKER_NOISE.match(text):
            return None  # the Train controller, placement-group cleaner, Serve controller, raylet, ...
        if _own_line(text, self.packages):
            self._in_block[who] = True
            return text
        if self._PROGRESS.match(text.strip()):
            return text
        if self._TIMESTAMPED.match(text) or not text.strip():
            self._in_block[who] = False
            return None
        return text if self._in_block.get(who) else None


def stream_beside(stream: TextIO, fd: int, saved_fd: int) -> tuple[TextIO, bool]:
    """Where ``stream`` wrote before fd ``fd`` is redirected: a new stream on the saved descriptor when it wrote
    to ``fd`` (a terminal, a pipe, a file), else ``stream`` itself (an in-memory capture such as pytest's, or a
    caller's own replacement of ``sys.stdout``); the flag says whether the caller owns (closes) it."""
    try:
        writes_to_fd = stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        writes_to_fd = False
    if writes_to_fd:
        return os.fdopen(os.dup(saved_fd), "w", encoding="utf-8", errors="replace", buffering=1), True
    return stream, False


@contextlib.contextmanager
def quiet_terminal(log_path: str | Path, packages: Iterable[str] = OWN_PACKAGES,
                   level: int = logging.INFO) -> Iterator[TextIO]:
    """Route fd 1/2, ``sys.stdout``/``sys.stderr`` and the root logger to ``log_path`` (appended) and show only
    finsent's lines on the terminal (on stderr); yields a stream on the original stdout for the command's own
    output (results, the URL it serves at). Restores everything on exit, also on an exception."""
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    saved = os.dup(1), os.dup(2)
    results, own_results = stream_beside(sys.stdout, 1, saved[0])
    terminal, own_terminal = stream_beside(sys.stderr, 2, saved[1])
    log = open(path, "a", encoding="utf-8", errors="replace", buffering=1)  # noqa: SIM115 - closed below
    read_fd, write_fd = os.pipe()
    keep = LineFilter(packages)

    def pump() -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = re.split(rb"(?<=[\n\r])", pending)
                for raw in lines:
                    line = raw.decode("utf-8", errors="replace")
                    log.write(line if line.endswith("\n") else line.rstrip("\r") + "\n")
                    shown = keep(line.rstrip("\r\n"))
                    if shown is not None:
                        terminal.write(shown + ("\r" if line.endswith("\r") else "\n"))
            if pending:
                log.write(pending.decode("utf-8", errors="replace") + "\n")

    thread = threading.Thread(target=pump, name="finsent-quiet-terminal", daemon=True)
    thread.start()
    orig_streams = sys.stdout, sys.stderr
    root = logging.getLogger()
    old_handlers, old_level = root.handlers[:], root.level
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    try:
        yield results
    finally:
        logging.captureWarnings(False)
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        root.handlers[:] = old_handlers
        root.setLevel(old_level)
        sys.stdout, sys.stderr = orig_streams
        os.dup2(saved[0], 1)  # closes the pipe's last write ends: the pump drains and stops
        os.dup2(saved[1], 2)
        thread.join(timeout=3)
        for fd in saved:
            os.close(fd)
        log.close()
        for stream, owned in ((terminal, own_terminal), (results, own_results)):
            if owned:
                stream.close()
            else:
                with contextlib.suppress(Exception):
                    stream.flush()
