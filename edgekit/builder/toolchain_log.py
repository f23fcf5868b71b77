"""The toolchain's output goes to a log file; the terminal keeps edgekit's own lines.

litert-torch, torchao, ai-edge-quantizer, TensorFlow Lite and LiteRT-LM print from
Python (``print``, ``logging``, ``warnings``, tqdm bars) and from native code that
writes to file descriptors 1 and 2 directly ("Failed to load ....so", "INFO: Created
TensorFlow Lite XNNPACK delegate", glog lines). :class:`ToolchainLog` therefore
redirects at two levels while it is active:

- file descriptors 1 and 2 are pointed at the log file with ``os.dup2`` (native code,
  child processes that inherit them), and C stdio buffers are flushed before they are
  pointed back, so nothing buffered leaks onto the terminal afterwards;
- ``sys.stdout`` / ``sys.stderr`` are replaced by sinks that write to the log, so
  Python-level output is caught even when those objects are not backed by fds 1/2
  (a test runner's capture buffer). A sink stays valid after the log closes: a
  ``logging`` handler created during a build keeps it and later writes fall through
  to the stream that was in place before (or to the log of a build running then).

:meth:`ToolchainLog.outside` wraps a callback (edgekit's stage progress) so that it
runs with the terminal restored: callers' progress lines reach the terminal even
though the whole build runs inside the log.

:class:`StageProgress` renders those stage callbacks: one redrawn bar with percent,
rate and ETA on a TTY, plain ``[stage] message`` lines otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

LOG_FILE = "toolchain.log"

_ACTIVE: list["ToolchainLog"] = []  # logs currently capturing (innermost last)


def _flush_c_stdio() -> None:
    """Flush every C ``FILE*`` buffer (native code printing through stdio)."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


def _flush(stream: Any) -> None:
    try:
        if stream is not None:
            stream.flush()
    except (OSError, ValueError):
        pass


class _Sink(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` while a log is active; afterwards, the stream it replaced."""

    def __init__(self, fallback: Any, fd: int):
        self._fallback = fallback
        self._fd = fd

    def _target(self):
        for log in reversed(_ACTIVE):
            if not log.paused:
                return log.stream
        return self._fallback

    def write(self, s: str) -> int:  # type: ignore[override]
        t = self._target()
        try:
            t.write(s)
        except (OSError, ValueError, AttributeError):
            pass  # a closed fallback (a finished capture of a test runner): the text is dropped
        return len(s)

    def writelines(self, lines) -> None:  # type: ignore[override]
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        _flush(self._target())

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        if any(not log.paused for log in _ACTIVE):
            return self._fd  # fds 1/2 point at the log while it is active
        return self._fallback.fileno()

    @property
    def encoding(self):  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True


class ToolchainLog:
    """Context manager: fds 1/2 and sys.stdout/sys.stderr go to ``path`` (appended) while active."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.stream: Any = None
        self.paused = False
        self.failed_stage: str | None = None  # set by the pipeline when a stage raises
        self.final_path: Path | None = None  # where the pipeline moves the log after a success
        self._fd: int | None = None
        self._saved: dict[int, int] = {}
        self._prev: tuple[Any, Any] = (None, None)
        self._sinks: tuple[_Sink, _Sink] | None = None
        self._lock = threading.RLock()

    # -- redirection
    def _point_fds_at_log(self) -> None:
        os.dup2(self._fd, 1)
        os.dup2(self._fd, 2)
        sys.stdout, sys.stderr = self._sinks

    def _point_fds_back(self) -> None:
        _flush(self.stream)
        _flush(sys.stdout)
        _flush(sys.stderr)
        _flush_c_stdio()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
        sys.stdout, sys.stderr = self._prev

    def __enter__(self) -> "ToolchainLog":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _flush(sys.stdout)
        _flush(sys.stderr)
        _flush_c_stdio()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.stream = open(os.dup(self._fd), "w", buffering=1, encoding="utf-8", errors="replace")
        self._saved = {fd: os.dup(fd) for fd in (1, 2)}
        self._prev = (sys.stdout, sys.stderr)
        self._sinks = (_Sink(self._prev[0], 1), _Sink(self._prev[1], 2))
        self._point_fds_at_log()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            if self in _ACTIVE:
                _ACTIVE.remove(self)
            if not self.paused:
                self._point_fds_back()
            self.paused = False
            for saved in self._saved.values():
                os.close(saved)
            self._saved = {}
            with contextlib.suppress(OSError, ValueError):
                self.stream.close()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    @contextlib.contextmanager
    def paused_output(self):
        """Within: the terminal (fds and sys streams) as it was before the log began."""
        with self._lock:
            if self._fd is None or self.paused:
                yield
                return
            self._point_fds_back()
            self.paused = True
            try:
                yield
            finally:
                _flush(sys.stdout)
                _flush(sys.stderr)
                self.paused = False
                self._point_fds_at_log()

    def outside(self, fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
        """``fn`` wrapped to run with the terminal restored (None stays None)."""
        if fn is None:
            return None

        def call(*args, **kwargs):
            with self.paused_output():
                return fn(*args, **kwargs)

        plan = getattr(fn, "plan", None)
        if plan is not None:
            call.plan = lambda stages: self.outside(plan)(stages)  # type: ignore[attr-defined]
        return call

    def note(self, text: str) -> None:
        """An edgekit line in the log (stage boundaries), so the toolchain's lines have context."""
        if self.stream is not None:
            with contextlib.suppress(OSError, ValueError):
                self.stream.write(f"==== edgekit {time.strftime('%H:%M:%S')} {text}\n")
                self.stream.flush()


# ------------------------------------------------------------------ progress
def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class StageProgress:
    """``progress(stage, message, seconds)`` for :func:`edgekit.builder.pipeline.build`.

    Non-TTY: one line when a stage starts (``[stage] message ...``) and one when it
    ends (``... done in X s``). TTY: one line redrawn in place, with the share of the
    planned stages done, the rate (stages per minute, from the elapsed time) and an
    ETA at that rate (n/a until a stage has finished); a background tick keeps the
    elapsed time moving during long stages. ``plan(stages)`` (called by the pipeline)
    gives the stage names to expect.
    """

    WIDTH = 24

    def __init__(self, stream: Any = None, tty: bool | None = None, tick_s: float = 0.5):
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            try:
                tty = bool(self.stream.isatty())
            except (AttributeError, ValueError):
                tty = False
        self.tty = tty
        if self.tty:
            # A private copy of the terminal fd: bar redraws from the tick thread go to the
            # terminal even while fd 2 points at the toolchain log.
            try:
                self.stream = open(os.dup(self.stream.fileno()), "w", buffering=1, encoding="utf-8",
                                   errors="replace")
            except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
                pass
        self.stages: list[str] = []
        self.done: set[str] = set()
        self.current: tuple[str, str] | None = None
        self._tick_s = tick_s
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._width = 0

    def plan(self, stages: Sequence[str]) -> None:
        self.stages = list(dict.fromkeys(stages))

    def _fraction(self) -> float | None:
        if not self.stages:
            return None
        return min(1.0, len(self.done & set(self.stages)) / len(self.stages))

    def line(self, now: float | None = None) -> str:
        """The bar's text (TTY mode)."""
        now = time.monotonic() if now is None else now
        elapsed = now - self.t0
        frac = self._fraction()
        n_done = len(self.done & set(self.stages))
        stage, msg = self.current or ("", "")
        if frac is None:
            return f"[{stage}] {msg}  {_hms(elapsed)}"
        fill = int(round(frac * self.WIDTH))
        bar = "#" * fill + "-" * (self.WIDTH - fill)
        rate = n_done / elapsed * 60 if n_done and elapsed > 0 else None
        eta = (len(self.stages) - n_done) * elapsed / n_done if n_done else None
        rate_s = f"{rate:.1f} stages/min" if rate is not None else "n/a stages/min"
        return (f"[{bar}] {frac * 100:3.0f}% {n_done}/{len(self.stages)} {rate_s} "
                f"elapsed {_hms(elapsed)} ETA {_hms(eta)}  {stage}: {msg}")

    def _draw(self) -> None:
        text = self.line()
        try:
            cols = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            cols = 120
        text = text[: max(20, cols - 1)]
        with contextlib.suppress(OSError, ValueError):
            self.stream.write("\r" + text + "\x1b[K")
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self._tick_s):
            with self._lock:
                self._draw()

    def __call__(self, stage: str, message: str, seconds: float | None) -> None:
        with self._lock:
            if not self.tty:
                if seconds is None:
                    self.stream.write(f"[{stage}] {message} ...\n")
                else:
                    self.stream.write(f"[{stage}] {message}: done in {seconds:.2f} s\n")
                with contextlib.suppress(OSError, ValueError):
                    self.stream.flush()
                return
            if seconds is None:
                # a new stage starts: every earlier planned stage is over
                if self.current and self.current[0] != stage:
                    self.done.add(self.current[0])
                self.current = (stage, message)
            else:
                self.current = (stage, f"{message} ({seconds:.1f} s)")
            self._draw()
            if self._thread is None:
                self._thread = threading.Thread(target=self._tick, name="edgekit-progress", daemon=True)
                self._thread.start()

    def close(self, ok: bool = True) -> None:
        """Stop the tick; on a TTY finish the bar's line (once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.tty:
            with self._lock:
                if ok and self.current:
                    self.done.update(self.stages)
                    self.current = ("done", "")
                self._draw()
                with contextlib.suppress(OSError, ValueError):
                    self.stream.write("\n")
                    self.stream.flush()
