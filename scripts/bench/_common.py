"""Shared helpers of the benchmark scripts in scripts/bench/ (not part of the edgekit package).

* machine / commit / date facts for RESULTS.md,
* peak memory of a child process *tree* (sampled from /proc, plus the command's wait4 rusage
  taken by a small launcher process),
* ratio tables with targets and PASS/MISS,
* replacing one script's section of scripts/bench/RESULTS.md atomically.

Everything here measures or reads; nothing is typed in.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
VENV_BIN = REPO / ".venv" / "bin"
sys.path.insert(0, str(REPO))
from edgekit.results.gate import ABSOLUTE, WITHIN, Threshold  # noqa: E402
GIB = 1024**3
MIB = 1024**2


# ------------------------------------------------------------------ machine, commit, date
def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    out[k] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    except OSError:
        pass
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    mi = _meminfo()
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(mi.get("MemTotal", 0) / GIB, 1),
        "mem_available_gib": round(mi.get("MemAvailable", 0) / GIB, 1),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": tuple(round(x, 2) for x in os.getloadavg()),
    }


def mem_available() -> int:
    return _meminfo().get("MemAvailable", 0)


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + (" (work tree has uncommitted changes)" if dirty else "")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def header_lines() -> list[str]:
    m = machine_info()
    return [
        f"- date: {utc_now()}",
        f"- commit: {git_commit()}",
        f"- machine: {m['cores']} cores, {m['ram_gib']} GiB RAM ({m['mem_available_gib']} GiB available at start), "
        f"{m['cpu']}, Linux {m['kernel']}, Python {m['python']}, load average {m['loadavg'][0]}",
    ]


# ------------------------------------------------------------------ process-tree memory
def _proc_table() -> dict[int, int]:
    """pid -> ppid for every visible process."""
    out: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read().decode(errors="replace")
            # comm may hold spaces/parens: fields after the last ')'
            rest = s[s.rindex(")") + 2:].split()
            out[int(d)] = int(rest[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def tree_pids(root: int) -> list[int]:
    table = _proc_table()
    kids: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, stack = [], [root]
    while stack:
        p = stack.pop()
        if p in table or p == root:
            out.append(p)
        stack.extend(kids.get(p, []))
    return out


def _status_kb(pid: int, keys: Sequence[str]) -> dict[str, int]:
    got: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in keys:
                    got[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return got


@dataclasses.dataclass
class TreeMemory:
    peak_tree_rss: int = 0  # bytes: max over samples of the summed RSS of the whole tree
    peak_tree_anon: int = 0  # bytes: same for RssAnon
    peak_single_hwm: int = 0  # bytes: max VmHWM seen for one process of the tree (kernel's own peak)
    samples: int = 0
    timeline: list[tuple[float, int, str]] = dataclasses.field(default_factory=list)  # (t_s, tree_rss, top cmd)


class TreeSampler:
    """Samples RSS of a process and all its descendants every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1, keep_timeline: bool = True, skip_root: bool = False):
        self.pid = pid
        self.skip_root = skip_root  # the root is run_measured's launcher, not part of the command
        self.interval = interval
        self.mem = TreeMemory()
        self.keep = keep_timeline
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._th = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "TreeSampler":
        self._th.start()
        return self

    def sample(self) -> None:
        total_rss = total_anon = 0
        top = (0, "")
        for p in tree_pids(self.pid):
            if self.skip_root and p == self.pid:
                continue
            st = _status_kb(p, ("VmRSS", "RssAnon", "VmHWM"))
            rss = st.get("VmRSS", 0) * 1024
            total_rss += rss
            total_anon += st.get("RssAnon", 0) * 1024
            self.mem.peak_single_hwm = max(self.mem.peak_single_hwm, st.get("VmHWM", 0) * 1024)
            if rss > top[0]:
                try:
                    with open(f"/proc/{p}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
                except OSError:
                    cmd = "?"
                top = (rss, cmd)
        self.mem.samples += 1
        self.mem.peak_tree_rss = max(self.mem.peak_tree_rss, total_rss)
        self.mem.peak_tree_anon = max(self.mem.peak_tree_anon, total_anon)
        if self.keep:
            self.mem.timeline.append((round(time.monotonic() - self._t0, 2), total_rss, top[1]))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> TreeMemory:
        self._stop.set()
        self._th.join(timeout=5)
        return self.mem


@dataclasses.dataclass
class ChildRun:
    argv: list[str]
    returncode: int
    seconds: float
    stdout: str
    stderr: str
    mem: TreeMemory
    rusage_maxrss: int  # bytes: wait4 ru_maxrss of the command (it and the descendants it reaped)
    stderr_lines: list[tuple[float, str]] = dataclasses.field(default_factory=list)  # (t_s since start, line)
    t0_epoch: float = 0.0  # time.time() when the child was started

    @property
    def peak_rss(self) -> int:
        """Peak memory of the command: the sampled tree peak, at least the kernel's per-process high-water mark."""
        return max(self.mem.peak_tree_rss, self.mem.peak_single_hwm, self.rusage_maxrss)

    def line_before(self, t: float) -> str:
        """The last stderr line printed before ``t`` (seconds since start): which stage ran then."""
        last = ""
        for ts, line in self.stderr_lines:
            if ts > t:
                break
            if line.strip():
                last = line.strip()
        return last


# A small, freshly started process that runs the command as its child, waits for it with
# os.wait4 and writes the child's ru_maxrss (kB) to the fd given first. ru_maxrss of a process
# starts at the resident size of the process it was forked from (the high-water mark of the old
# memory map is kept across exec): a command started straight from a big parent (a pytest process
# holding torch, a benchmark script) would be charged the parent's size. From this launcher the
# floor is the launcher's own few MB. SIGTERM is passed on as SIGKILL (run_measured's timeout) and
# SIGHUP as is; SIGINT is ignored (a terminal's Ctrl-C reaches the command itself), and the launcher
# exits as the command did.
_LAUNCHER = r"""
import os, signal, sys
fd, argv = int(sys.argv[1]), sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.close(fd)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, f"run_measured: cannot run {argv[0]}: {exc}\n".encode())
    os._exit(127)
def relay(signum, frame):
    os.kill(pid, signal.SIGKILL if signum == signal.SIGTERM else signum)
signal.signal(signal.SIGTERM, relay)
signal.signal(signal.SIGHUP, relay)
signal.signal(signal.SIGINT, signal.SIG_IGN)
_, status, ru = os.wait4(pid, 0)
os.write(fd, b"%d\n" % ru.ru_maxrss)
os.close(fd)
code = os.waitstatus_to_exitcode(status)
if code < 0:
    if -code not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
os._exit(code & 0xFF)
"""


class MemoryCgroup:
    """A memory cgroup with a hard limit, for running a command as a machine of that size would:
    anonymous memory over the limit is OOM-killed, file-backed pages (page cache, mapped weight
    caches) are reclaimed to stay under it. cgroup v2 (``memory.max``) where the unified
    hierarchy has the memory controller, else v1 (``memory.limit_in_bytes``); needs root.

    ``argv(cmd)`` wraps a command so that it joins the group before it execs; ``stats()`` reads the
    group's peak charge and how often the limit was hit; ``remove()`` deletes the group."""

    def __init__(self, limit_bytes: int, name: str | None = None):
        name = name or f"edgekit-bench-{os.getpid()}"
        v2 = Path("/sys/fs/cgroup")
        if "memory" in (v2 / "cgroup.controllers").read_text().split() if (v2 / "cgroup.controllers").is_file() \
                else False:
            self.path, self.v2 = v2 / name, True
        else:
            self.path, self.v2 = Path("/sys/fs/cgroup/memory") / name, False
        try:
            self.path.mkdir(exist_ok=True)
            (self.path / ("memory.max" if self.v2 else "memory.limit_in_bytes")).write_text(str(limit_bytes))
        except OSError as exc:
            raise SystemExit(f"error: cannot create a memory cgroup at {self.path} ({exc.strerror}): "
                             "run as root on a machine with the cgroup memory controller, or drop --memory-limit")
        self.limit = limit_bytes

    def argv(self, cmd: Sequence[str]) -> list[str]:
        procs = self.path / "cgroup.procs"
        return ["/bin/sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh", *cmd]

    def stats(self) -> dict[str, Any]:
        def num(f: str) -> int | None:
            try:
                return int((self.path / f).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None

        def kv(f: str) -> dict[str, int]:
            try:
                return {k: int(v) for k, v in (ln.split() for ln in (self.path / f).read_text().splitlines())}
            except (OSError, ValueError):
                return {}

        if self.v2:
            ev = kv("memory.events")
            return {"cgroup": str(self.path), "limit_bytes": self.limit, "peak_bytes": num("memory.peak"),
                    "limit_hits": ev.get("max"), "oom_kills": ev.get("oom_kill")}
        return {"cgroup": str(self.path), "limit_bytes": self.limit, "peak_bytes": num("memory.max_usage_in_bytes"),
                "limit_hits": num("memory.failcnt"), "oom_kills": kv("memory.oom_control").get("oom_kill")}

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def _wait(proc: subprocess.Popen, timeout: float | None) -> None:
    """Wait for the launcher; past ``timeout`` it kills the command (SIGTERM is relayed as SIGKILL)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_measured(argv: Sequence[str], *, interval: float = 0.1, cwd: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None, nice: int = 0, timeout: float | None = None,
                 keep_timeline: bool = True, echo: bool = False, watchers: Sequence[Any] = ()) -> ChildRun:
    """Run ``argv``; measure wall time and the peak RSS of its whole process tree; timestamp stderr lines.

    The command runs under a small launcher process (see ``_LAUNCHER``), so its ru_maxrss is its
    own and its reaped descendants', whatever this process is or ran before.
    """
    pre = (lambda: os.nice(nice)) if nice else None
    rfd, wfd = os.pipe()
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(wfd), *argv]
    t0_epoch = time.time()
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(launcher, cwd=cwd, env=env, preexec_fn=pre, text=True, errors="replace",
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(wfd,))
    finally:
        os.close(wfd)
    sampler = TreeSampler(proc.pid, interval, keep_timeline, skip_root=True).start()
    sampler._t0 = t0
    started = [w(proc.pid, t0) for w in watchers]  # each returns an object with .stop()
    out_chunks: list[str] = []
    err_lines: list[tuple[float, str]] = []
    rusage: list[bytes] = []

    def read_out() -> None:
        out_chunks.append(proc.stdout.read())

    def read_err() -> None:
        for line in proc.stderr:
            err_lines.append((time.monotonic() - t0, line))
            if echo:
                sys.stderr.write("    | " + line)
                sys.stderr.flush()

    def read_rusage() -> None:
        with os.fdopen(rfd, "rb") as f:
            rusage.append(f.read())

    ths = [threading.Thread(target=f, daemon=True) for f in (read_out, read_err, read_rusage)]
    for th in ths:
        th.start()
    _wait(proc, timeout)
    dt = time.monotonic() - t0
    for th in ths:
        th.join(timeout=10)
    mem = sampler.stop()
    for w in started:
        w.stop()
    try:
        child_maxrss = int(rusage[0].decode().strip()) * 1024 if rusage else 0  # Linux: kilobytes
    except ValueError:
        child_maxrss = 0
    return ChildRun(list(argv), proc.returncode, dt, "".join(out_chunks), "".join(l for _, l in err_lines), mem,
                    child_maxrss, err_lines, t0_epoch)


# ------------------------------------------------------------------ statistics
def mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def cv(xs: Sequence[float]) -> float:
    """Coefficient of variation (sample stdev / mean), nan for fewer than 2 values."""
    if len(xs) < 2:
        return float("nan")
    m = statistics.fmean(xs)
    return statistics.stdev(xs) / m if m else float("nan")


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or (isinstance(a, float) and math.isnan(a)) or \
            (isinstance(b, float) and math.isnan(b)):
        return None
    return a / b


# ------------------------------------------------------------------ targets and tables
def target(op: str, bound: float) -> Threshold:
    """A benchmark target: the gate's absolute threshold on a row's figure (edgekit.results.gate),
    ``>=``/``<=``/``>``/``<`` a bound, or ``within`` (|figure - 1| <= bound, for ratios near 1)."""
    text = f"1 ± {bound:g}" if op == WITHIN else f"{op} {bound:g}"
    return Threshold("figure", ABSOLUTE, op, float(bound), text, "benchmark script")


def verdict(t: Threshold, value: float | None) -> str:
    """PASS / MISS, or n/a when there is no figure (the gate's rule: it never passes)."""
    return {True: "PASS", False: "MISS", None: "n/a"}[t.holds(value)]


def target_text(t: Threshold, unit: str = "x") -> str:
    return t.text if t.op == WITHIN else f"{t.text}{unit}"


@dataclasses.dataclass
class Row:
    name: str
    a: float | str | None = None
    b: float | str | None = None
    value: float | None = None  # the ratio (or figure) compared with the target
    target: Threshold | None = None
    unit: str = "x"
    note: str = ""

    @property
    def verdict(self) -> str:
        return verdict(self.target, self.value) if self.target else ""


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    av = abs(v)
    if av >= 1000:
        return f"{v:,.0f}"
    if av >= 100:
        return f"{v:.1f}"
    return f"{v:.{digits}g}"


def table(rows: Sequence[Row], head: tuple[str, str, str, str] = ("metric", "A", "B", "A/B")) -> str:
    """Markdown table (also readable in a terminal)."""
    lines = [f"| {head[0]} | {head[1]} | {head[2]} | {head[3]} | target | verdict |",
             "|---|---:|---:|---:|---|---|"]
    for r in rows:
        val = fmt(r.value) + (r.unit if r.value is not None and r.unit not in ("", "x") else "")
        if r.value is not None and r.unit == "x":
            val = f"{fmt(r.value)}x"
        tgt = target_text(r.target, r.unit) if r.target else ""
        lines.append(f"| {r.name} | {fmt(r.a)} | {fmt(r.b)} | {val} | {tgt} | {r.verdict}"
                     + (f" ({r.note})" if r.note else "") + " |")
    return "\n".join(lines)


def verdicts(rows: Sequence[Row]) -> dict[str, int]:
    out = {"PASS": 0, "MISS": 0, "n/a": 0}
    for r in rows:
        if r.target:
            out[r.verdict] = out.get(r.verdict, 0) + 1
    return out


# ------------------------------------------------------------------ RESULTS.md
_PREAMBLE = """# edgekit performance benchmarks: latest results

Each section is written by its script (`scripts/bench/<name>.py --write`), from figures
measured side by side in one run on the machine named in the section. Nothing here is
typed in by hand. See scripts/bench/README.md for what each script does.
"""


def update_results(name: str, body: str, path: Path = RESULTS_MD) -> Path:
    """Replace (or append) the section between ``<!-- bench:NAME -->`` markers, atomically."""
    sys.path.insert(0, str(REPO))
    from edgekit.fsutil import atomic_write_text

    start, end = f"<!-- bench:{name} start -->", f"<!-- bench:{name} end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.is_file() else _PREAMBLE
    pat = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pat.search(text):
        text = pat.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(path, with_summary(text))
    return path


def section_body(name: str, path: Path = RESULTS_MD) -> str | None:
    """The text of RESULTS.md's ``name`` section as last written, or None."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    m = re.search(re.escape(f"<!-- bench:{name} start -->") + r"(.*?)" + re.escape(f"<!-- bench:{name} end -->"),
                  text, re.S)
    return m.group(1) if m else None


def table_cells(body: str) -> dict[str, list[str]]:
    """metric -> its six cells, for every row of the tables in a section's text."""
    out = {}
    lines = body.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        nxt = lines[i + 1].replace("|", "").strip() if i + 1 < len(lines) else ""
        header = bool(nxt) and set(nxt) <= set("-: ")  # the line above a |---| separator
        if len(cells) == 6 and line.startswith("|") and not set(cells[1]) <= set("-:") and not header:
            out[cells[0]] = cells
    return out


def with_summary(text: str) -> str:
    """(Re)write the summary block: every row with a target, copied from the sections below it."""
    s0, s1 = "<!-- bench:summary start -->", "<!-- bench:summary end -->"
    text = re.sub(re.escape(s0) + r".*?" + re.escape(s1) + r"\n*", "", text, flags=re.S)
    rows = ["| section | metric | value | target | verdict | date |", "|---|---|---:|---|---|---|"]
    for m in re.finditer(r"<!-- bench:(\S+) start -->(.*?)<!-- bench:\1 end -->", text, re.S):
        name, body = m.group(1), m.group(2)
        if name.endswith("-tiny"):  # plumbing checks, not target figures
            continue
        date = re.search(r"- date: (\S+ \S+)", body)
        for line in body.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 6 and cells[5].split(" ")[0] in ("PASS", "MISS", "n/a") and cells[4]:
                rows.append(f"| {name} | {cells[0]} | {cells[3]} | {cells[4]} | {cells[5]} | "
                            f"{date.group(1) if date else ''} |")
    block = s0 + "\n## Summary (copied from the sections below by `_common.with_summary`)\n\n" + \
        "\n".join(rows) + "\n" + s1 + "\n\n"
    first = text.find("<!-- bench:")
    return text + "\n" + block if first < 0 else text[:first] + block + text[first:]


def section(title: str, rows: Sequence[Row], head: tuple[str, str, str, str], notes: Sequence[str] = (),
            settings: Sequence[str] = ()) -> str:
    v = verdicts(rows)
    parts = [f"## {title}", "", *header_lines()]
    parts += [f"- {s}" for s in settings]
    parts += ["", table(rows, head), "",
              f"Targets: {v['PASS']} PASS, {v['MISS']} MISS" + (f", {v['n/a']} not measured" if v["n/a"] else "")]
    if notes:
        parts += [""] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------ misc
def run_options(ap, *, reps: int, warmup: int | None = 1, prefill: int | None = None, decode: int | None = None,
                prefill_help: str | None = None, decode_help: str | None = None) -> None:
    """The bench-run options every benchmark takes: --reps, --warmup (unless ``warmup`` is None),
    --prefill and --decode (None: the script picks per model)."""
    ap.add_argument("--reps", type=int, default=reps)
    if warmup is not None:
        ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--prefill", type=int, default=prefill, help=prefill_help)
    ap.add_argument("--decode", type=int, default=decode, help=decode_help)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def other_big_jobs(patterns: Sequence[str] = ("build e2b", "edgekit.builder.export", "export_hf", "build e4b")) -> list[str]:
    """Command lines of other processes (not ours) that look like a big build/export."""
    mine = set(tree_pids(os.getpid())) | {os.getppid()}
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in mine:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if any(p in cmd for p in patterns[1:]) and ("e2b" in cmd or "e4b" in cmd) or patterns[0] in cmd:
            out.append(f"{d}: {cmd[:160]}")
    return out


def wait_for_quiet_machine(max_wait_s: float = 3600, poll_s: float = 20, need_bytes: int = 0) -> None:
    """Wait until no other big e2b build/export runs (and ``need_bytes`` of memory are available)."""
    t0 = time.monotonic()
    while True:
        jobs = other_big_jobs()
        avail = mem_available()
        if not jobs and avail >= need_bytes:
            return
        if time.monotonic() - t0 > max_wait_s:
            raise SystemExit(f"error: machine still busy after {max_wait_s:.0f} s: {jobs or f'{avail / GIB:.1f} GiB free'}")
        log(f"waiting: {'; '.join(jobs) if jobs else ''} available {avail / GIB:.1f} GiB (need {need_bytes / GIB:.1f})")
        time.sleep(poll_s)


def edgekit_argv(*args: str) -> list[str]:
    """The edgekit CLI of this checkout's venv."""
    exe = VENV_BIN / "edgekit"
    if exe.exists():
        return [str(exe), *args]
    return [str(VENV_BIN / "python"), "-m", "edgekit", *args]


# ------------------------------------------------------------------ builds
_BUILD_SHIM = r"""
import sys
from edgekit.builder.pipeline import build
from edgekit.errors import EdgekitError
model, scheme, wd, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def progress(stage, msg, secs):
    print(f"{stage}: {msg}" + ("" if secs is None else f" ({secs:.1f} s)"), file=sys.stderr, flush=True)
try:
    r = build(model, random_weights=True, width_div=wd, scheme=scheme, text_only=True, output=out, progress=progress)
except EdgekitError as exc:
    print(f"error: {exc.message}", file=sys.stderr)
    sys.exit(exc.exit_code if hasattr(exc, "exit_code") else 1)
print(r.bundle)
"""


def has_build_cli() -> bool:
    return (REPO / "edgekit" / "cli" / "build.py").is_file()


def build_argv(model: str, scheme: str, width_div: int, output: Path) -> tuple[list[str], str]:
    """argv of `edgekit build MODEL --random-weights --width-div K --text-only --scheme S --output OUT`.

    Falls back to calling ``edgekit.builder.pipeline.build`` with the same arguments while
    the ``build`` CLI command has not landed (returns a note saying so).
    """
    if has_build_cli():
        help_text = subprocess.run(edgekit_argv("build", "--help"), capture_output=True, text=True,
                                   cwd=REPO).stdout
        out_flag = "--output" if "--output" in help_text else ("--dist" if "--dist" in help_text else "-o")
        argv = edgekit_argv("build", model, "--random-weights", "--width-div", str(width_div), "--text-only",
                            "--scheme", scheme, out_flag, str(output))
        return argv, "`" + " ".join(["edgekit", *argv[1:]]) + "`"
    argv = [str(VENV_BIN / "python"), "-c", _BUILD_SHIM, model, scheme, str(width_div), str(output)]
    return argv, ("edgekit.builder.pipeline.build(random_weights=True, text_only=True, ...) through a 10-line shim "
                  "(the `edgekit build` CLI command had not landed)")


def text_bundle_name(model: str, scheme: str) -> str:
    """``<model>-<scheme>-text``: the folder `edgekit build --text-only` writes (edgekit.results.manifest)."""
    sys.path.insert(0, str(REPO))
    from edgekit.results.manifest import bundle_name

    return bundle_name(model, scheme, True)


def find_bundle(out_root: Path, model: str, scheme: str) -> Path | None:
    d = out_root / text_bundle_name(model, scheme)
    files = sorted(d.glob("*.litertlm")) if d.is_dir() else []
    return files[0] if files else None


def read_manifest(bundle: Path):
    """The typed manifest beside ``bundle`` (edgekit.results.manifest.Manifest, read leniently);
    None when there is none or it is unreadable."""
    sys.path.insert(0, str(REPO))
    from edgekit.errors import EdgekitError
    from edgekit.results.manifest import read_beside

    try:
        return read_beside(bundle)[1]
    except EdgekitError:
        return None


def atomic_json(path: Path, data: Any) -> None:
    sys.path.insert(0, str(REPO))
    from edgekit.fsutil import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)


# ------------------------------------------------------------------ bundles and bench results (shared by the scripts)
def find_or_build(model: str, scheme: str, wd: int, dist: Path, cache: Path, notes: list[str]) -> Path:
    """The text-only ``model`` ``scheme`` bundle at width-div ``wd``: reused from ``dist`` (or the
    repository's dist/) when its manifest says the same width, else built under nice, one big job
    at a time. ``notes`` gets a line saying which."""
    for root in (dist, REPO / "dist"):
        b = find_bundle(root, model, scheme)
        if b is not None:
            man = read_manifest(b)
            got_wd = man.width_div if man else None
            if got_wd == wd and man.text_only is not False:
                log(f"reusing {b} (manifest: width_div {got_wd})")
                notes.append(f"{scheme}: reused {b.relative_to(REPO) if b.is_relative_to(REPO) else b}")
                return b
    if model != "tiny":
        wait_for_quiet_machine()
    argv, how = build_argv(model, scheme, wd, dist)
    log(f"building {model} {scheme} w{wd}: {how}")
    run = run_measured(argv, cwd=REPO, env=dict(os.environ, EDGEKIT_CACHE=str(cache)), nice=5, echo=True)
    if run.returncode != 0:
        raise SystemExit(f"error: build failed (exit {run.returncode}): {run.stderr.strip().splitlines()[-1:]}")
    notes.append(f"{scheme}: built in {run.seconds:.0f} s, peak RSS {run.peak_rss / GIB:.1f} GiB ({how})")
    b = find_bundle(dist, model, scheme)
    if b is None:
        raise SystemExit(f"error: the build finished but no bundle in {dist}/{text_bundle_name(model, scheme)}/")
    return b


def decode_anon_mb(run: dict, folder: Path) -> float | None:
    """Resident anonymous memory (MB) while the run decoded: the stored run's RssAnon samples inside
    the decode windows of its trace (edgekit.bench.traces.decode_windows / peak_in_windows)."""
    from edgekit.bench.traces import decode_windows, parse_trace_dir, peak_in_windows

    t0 = run.get("t_start")
    if t0 is None or not run.get("trace_dir"):
        return None
    windows = decode_windows(parse_trace_dir(folder / run["trace_dir"]).measured, t0)
    return peak_in_windows([(pt[0], pt[2]) for pt in run.get("mem") or [] if len(pt) > 2], windows)


def medians(data: dict, folder: Path, role: str) -> dict[str, float | None]:
    """Medians over ``role``'s measured runs of an `edgekit bench --json` result: every run metric of
    the registry (edgekit.results.metrics), the anonymous memory while decoding, the run count and
    the decode CV."""
    from edgekit.results.metrics import RUN_METRICS

    runs = [r for r in data["result"]["runs"] if r["role"] == role and r["phase"] == "measure" and
            r.get("status", "ok") == "ok"]
    out: dict[str, float | None] = {}
    for k in RUN_METRICS:
        xs = [r["metrics"].get(k) for r in runs if r["metrics"].get(k) is not None]
        out[k] = median(xs) if xs else None
    da = [v for v in (decode_anon_mb(r, folder) for r in runs) if v is not None]
    out["decode_anon_mb"] = median(da) if da else None
    out["runs"] = len(runs)
    out["decode_cv"] = cv([r["metrics"]["decode_tps"] for r in runs if r["metrics"].get("decode_tps")])
    return out
