"""A Pixel 8 stand-in: the DEVICE side of the adb transport protocol over TCP.

The real adb server connects to it after ``adb connect 127.0.0.1:PORT`` exactly as
it connects to a phone with "ADB over network" on, so everything above
(adbutils, ``adb shell``, ``adb push``) runs unchanged. Sources: AOSP
``protocol.txt``, ``SYNC.TXT``, ``SERVICES.TXT`` and ``shell_protocol.h``.

Transport: 24-byte little-endian headers (command, arg0, arg1, data length,
data checksum, magic = command ^ 0xffffffff). CNXN handshake with a
``device::ro.product.name=shiba;ro.product.model=Pixel 8;...;features=...``
banner; optional AUTH (``auth="never"`` reproduces a phone whose "Allow USB
debugging" prompt is never accepted: the server lists it as *unauthorized*;
``offline=True`` never answers CNXN: the server lists it as *offline*).
Streams: OPEN/OKAY/WRTE/CLSE with flow control (one unacknowledged WRTE per
stream and direction; an inbound WRTE is acknowledged when its bytes are taken).

Services: ``shell:CMD`` (raw, stderr merged into stdout, no exit code),
``shell,v2,...:CMD`` (shell protocol packets: 0 stdin, 1 stdout, 2 stderr,
3 exit, 4 close-stdin, 5 window size), ``exec:CMD`` (raw), ``sync:`` (STAT,
LIST, SEND with DATA/DONE, RECV, QUIT; SEND creates parent folders as
``fixed_push_mkdir`` promises).

The phone's file system: the device folder ``/data/local/tmp`` is a sandbox
folder on this machine. Sync paths are mapped (``/data/local/tmp/x`` ->
``SANDBOX/x``); anything else is refused with "Permission denied" (writes) or
reads as missing, except read-only ``/proc`` and ``/sys`` as on a phone. Shell
commands run for real with ``/bin/sh`` (dash standing in for mksh), in the
sandbox, with ``/data/local/tmp`` rewritten to the sandbox path in the command
string and the sandbox path rewritten back to ``/data/local/tmp`` in the output,
so ``pwd``, ``sha256sum FILE`` or ``ls -l`` print device paths. (A mount
namespace would be more faithful but needs CAP_SYS_ADMIN, which CI containers
lack.) ``getprop``, ``dumpsys`` (battery, thermalservice), ``cmd``, ``toybox`` and a
quota-aware ``df`` come first on PATH from ``DIR/bin``; other tools (``stat``,
``sha256sum``, ``cat``, ``/proc``) are the host's. Shell commands are not
confined: they run as the emulator's user.

Faults for tests, read from ``DIR/faults.json`` at every SEND (see
:func:`write_faults`): ``drop_after_bytes`` closes the whole transport once that
many bytes of a SEND arrived, keeping the partial file (one-shot: cleared when it
fires); ``quota_bytes`` makes SEND fail with "No space left on device" once the
sandbox would grow past it, and ``df`` report that quota.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import posixpath
import re
import signal
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("adbemu")

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
NAMES = {A_SYNC: "SYNC", A_CNXN: "CNXN", A_AUTH: "AUTH", A_OPEN: "OPEN",
         A_OKAY: "OKAY", A_CLSE: "CLSE", A_WRTE: "WRTE"}

VERSION = 0x01000001            # >= this: checksums may be skipped
VERSION_SKIP_CHECKSUM = 0x01000001
MAX_PAYLOAD = 1024 * 1024
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
SYNC_DATA_MAX = 64 * 1024
SYNC_PATH_MAX = 1024

HANDSHAKE_TIMEOUT = 60.0        # no CNXN within this: drop the socket
PAYLOAD_TIMEOUT = 60.0          # a started message must complete within this
WRITE_TIMEOUT = 60.0            # the server must take our bytes within this
ACK_TIMEOUT = 120.0             # the server must OKAY our WRTE within this

DEVICE_TMP = "/data/local/tmp"
READ_ONLY_PREFIXES = ("/proc", "/sys")
FEATURES = ["shell_v2", "cmd", "fixed_push_mkdir"]

PIXEL8_PROPS: dict[str, str] = {
    "ro.product.model": "Pixel 8",
    "ro.product.name": "shiba",
    "ro.product.device": "shiba",
    "ro.product.board": "shiba",
    "ro.product.brand": "google",
    "ro.product.manufacturer": "Google",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.product.cpu.abilist": "arm64-v8a",
    "ro.product.cpu.abilist64": "arm64-v8a",
    "ro.product.first_api_level": "34",
    "ro.hardware": "shiba",
    "ro.board.platform": "zuma",
    "ro.soc.manufacturer": "Google",
    "ro.soc.model": "Tensor G3",
    "ro.build.version.release": "14",
    "ro.build.version.release_or_codename": "14",
    "ro.build.version.sdk": "34",
    "ro.build.version.codename": "REL",
    "ro.build.version.security_patch": "2024-02-05",
    "ro.build.id": "UQ1A.240205.004",
    "ro.build.display.id": "UQ1A.240205.004",
    "ro.build.type": "user",
    "ro.build.tags": "release-keys",
    "ro.build.fingerprint": "google/shiba/shiba:14/UQ1A.240205.004/11269751:user/release-keys",
    "ro.build.characteristics": "nosdcard",
    "ro.debuggable": "0",
    "ro.secure": "1",
    "ro.adb.secure": "1",
    "ro.boot.hardware": "shiba",
    "ro.boot.hardware.sku": "G9BQD",
    "ro.revision": "MP1.0",
    "ro.serialno": "EDGEKITSTANDIN8",
    "ro.kernel.version": "5.15",
    "ro.vndk.version": "34",
    "sys.boot_completed": "1",
    "dev.bootcomplete": "1",
    "init.svc.adbd": "running",
    "persist.sys.timezone": "Etc/UTC",
    "service.adb.tcp.port": "5555",
}

# What `dumpsys thermalservice` reports when this machine has no thermal zones to read.
IDLE_PHONE_TEMPS = [("BATTERY", 2, 28.0), ("SKIN", 3, 30.0), ("soc_therm", 0, 34.0),
                    ("cpu_little", 0, 33.0), ("cpu_mid", 0, 33.5), ("cpu_big", 0, 34.0)]


# --------------------------------------------------------------------------- paths
def map_device_path(device_path: str, sandbox: str) -> str | None:
    """``/data/local/tmp/...`` -> the sandbox path; None for anything else."""
    if not device_path.startswith("/"):
        return None
    norm = posixpath.normpath(device_path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm == DEVICE_TMP:
        return sandbox
    if norm.startswith(DEVICE_TMP + "/"):
        return sandbox + norm[len(DEVICE_TMP):]
    return None


_CMD_PATH = re.compile(r"(?<![\w/.-])/data/local/tmp(?=/|$|[^\w.-])")


def map_command(cmd: str, sandbox: str) -> str:
    """Rewrite every ``/data/local/tmp`` path in a command string to the sandbox."""
    return _CMD_PATH.sub(lambda m: sandbox, cmd)


class OutputMapper:
    """Streams bytes through, rewriting the sandbox path back to ``/data/local/tmp``."""

    def __init__(self, sandbox: str):
        self.needle = sandbox.encode()
        self.repl = DEVICE_TMP.encode()
        self.buf = b""

    def feed(self, data: bytes) -> bytes:
        data = (self.buf + data).replace(self.needle, self.repl)
        keep = 0
        # hold back a tail that could be the start of the needle
        for k in range(min(len(self.needle) - 1, len(data)), 0, -1):
            if self.needle.startswith(data[-k:]):
                keep = k
                break
        self.buf = data[len(data) - keep:] if keep else b""
        return data[: len(data) - keep]

    def flush(self) -> bytes:
        out, self.buf = self.buf, b""
        return out


# --------------------------------------------------------------------------- faults
def read_faults(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_faults(path: Path, faults: dict[str, Any]) -> None:
    """Atomically set the faults the running emulator applies (``{}`` clears them)."""
    unknown = set(faults) - {"drop_after_bytes", "quota_bytes", "drop_keep_partial"}
    if unknown:
        raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
    for key, value in faults.items():
        if key != "drop_keep_partial" and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{key} must be a non-negative int, got {value!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".faults.", suffix=".part")
    with os.fdopen(fd, "w") as f:
        json.dump(faults, f)
    os.replace(tmp, path)
    quota = path.parent / "quota_bytes"
    if "quota_bytes" in faults:
        quota.write_text(f"{faults['quota_bytes']}\n")
    else:
        quota.unlink(missing_ok=True)


def tree_bytes(folder: str) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


# --------------------------------------------------------------------------- config
class Config:
    def __init__(self, state: Path, sandbox: Path, auth: str = "none", offline: bool = False,
                 props: dict[str, str] | None = None):
        self.state = state
        self.sandbox = str(sandbox.resolve())
        if not re.fullmatch(r"[A-Za-z0-9_./+-]+", self.sandbox):
            raise SystemExit(f"sandbox path {self.sandbox!r} has characters a shell would interpret; "
                             "choose a state folder with a plain path")
        self.auth = auth
        self.offline = offline
        self.props = dict(PIXEL8_PROPS, **(props or {}))
        self.faults_path = state / "faults.json"
        self.bin = state / "bin"
        self.props_path = state / "props.txt"

    def banner(self) -> bytes:
        p = self.props
        return (f"device::ro.product.name={p['ro.product.name']};ro.product.model={p['ro.product.model']};"
                f"ro.product.device={p['ro.product.device']};features={','.join(FEATURES)}").encode()

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": self.sandbox,
            "TMPDIR": self.sandbox,
            "USER": os.environ.get("USER", "shell"),
            "LANG": "C.UTF-8",
            "HOSTNAME": self.props["ro.product.device"],
            "ANDROID_ROOT": "/system",
            "ANDROID_DATA": "/data",
            "EXTERNAL_STORAGE": "/sdcard",
            "EDGEKIT_ADB_STANDIN": "1",
        }

    def resolve(self, device_path: str, write: bool) -> str | None:
        """Host path for a device path, or None when the phone would refuse it."""
        host = map_device_path(device_path, self.sandbox)
        if host is not None:
            real = os.path.realpath(host)
            if real == self.sandbox or real.startswith(self.sandbox + "/"):
                return host
            return None  # a symlink leading out of the sandbox
        if not write:
            norm = posixpath.normpath(device_path)
            if any(norm == p or norm.startswith(p + "/") for p in READ_ONLY_PREFIXES):
                return norm
        return None

    def install_tools(self) -> None:
        """Write getprop, dumpsys, cmd and df into DIR/bin (first on the shell's PATH)."""
        self.bin.mkdir(parents=True, exist_ok=True)
        self.props_path.write_text("".join(f"{k}={v}\n" for k, v in sorted(self.props.items())))
        temps = "\n".join(f"{n} {t} {v}" for n, t, v in IDLE_PHONE_TEMPS)
        (self.state / "idle_temps.txt").write_text(temps + "\n")
        tools = {
            "getprop": GETPROP.format(props=self.props_path),
            "dumpsys": DUMPSYS.format(temps=self.state / "idle_temps.txt"),
            "cmd": CMD,
            "toybox": TOYBOX,
            "df": DF.format(quota=self.state / "quota_bytes", sandbox=self.sandbox),
        }
        for name, text in tools.items():
            path = self.bin / name
            path.write_text(text)
            os.chmod(path, 0o755)


GETPROP = r"""#!/bin/sh
# getprop of the Pixel 8 stand-in (scripts/targetlib/adbemu.py): values from {props}
PROPS='{props}'
if [ $# -eq 0 ]; then
  while IFS='=' read -r k v; do printf '[%s]: [%s]\n' "$k" "$v"; done < "$PROPS"
  exit 0
fi
awk -v key="$1" -v dflt="$2" 'index($0, key "=") == 1 {{ print substr($0, length(key) + 2); found = 1; exit }}
  END {{ if (!found) print dflt }}' "$PROPS"
"""

DUMPSYS = r"""#!/bin/sh
# dumpsys of the Pixel 8 stand-in: battery and thermalservice in Android 14's format.
# Temperatures come from this machine's /sys/class/thermal when it has zones, else from {temps}.
temps() {{
  found=0
  for z in /sys/class/thermal/thermal_zone*; do
    [ -r "$z/temp" ] || continue
    t=$(cat "$z/temp" 2>/dev/null) || continue
    ty=$(cat "$z/type" 2>/dev/null || echo "${{z##*/}}")
    awk -v t="$t" -v n="$ty" 'BEGIN {{ printf "\tTemperature{{mValue=%.1f, mType=0, mName=%s, mStatus=0}}\n", t / 1000, n }}'
    found=1
  done
  if [ "$found" = 0 ]; then
    while read -r n ty v; do
      printf '\tTemperature{{mValue=%s, mType=%s, mName=%s, mStatus=0}}\n' "$v" "$ty" "$n"
    done < '{temps}'
  fi
}}
case "$1" in
  battery)
    cat <<'EOF'
Current Battery Service state:
  AC powered: false
  USB powered: true
  Wireless powered: false
  Dock powered: false
  Max charging current: 500000
  Max charging voltage: 5000000
  Charge counter: 3955000
  status: 2
  health: 2
  present: true
  level: 85
  scale: 100
  voltage: 4205
  temperature: 280
  technology: Li-ion
EOF
    ;;
  thermalservice)
    echo "IsStatusOverride: false"
    echo "ThermalEventListeners:"
    printf '\tcallbacks: 1\n\tkilled: false\n\tbroadcasts count: -1\n'
    echo "ThermalStatusListeners:"
    printf '\tcallbacks: 1\n\tkilled: false\n\tbroadcasts count: -1\n'
    echo "Thermal Status: 0"
    echo "Cached temperatures:"
    temps
    echo "HAL Ready: true"
    echo "HAL connection:"
    printf '\tThermalHAL AIDL 1  connected: yes\n'
    echo "Current temperatures from HAL:"
    temps
    echo "Current cooling devices from HAL:"
    printf '\tCoolingDevice{{mValue=0, mType=2, mName=fan}}\n'
    ;;
  ""|-l)
    printf 'Currently running services:\n  battery\n  thermalservice\n'
    ;;
  *)
    echo "Can't find service: $1" >&2
    ;;
esac
exit 0
"""

CMD = r"""#!/bin/sh
# cmd of the Pixel 8 stand-in: no system services run here.
echo "cmd: Can't find service: ${1:-}" >&2
exit 20
"""

TOYBOX = r"""#!/bin/sh
# toybox of the Pixel 8 stand-in: `toybox CMD ARGS` runs this machine's CMD.
if [ $# -eq 0 ]; then
  echo "cat chmod cp date df du echo grep head ls mkdir mv nproc ps rm sha256sum sleep stat tail taskset touch wc"
  exit 0
fi
exec "$@"
"""

DF = r"""#!/bin/sh
# df of the Pixel 8 stand-in: the host's df, unless a storage quota is set for tests,
# then /data is reported as that quota (used = bytes in the /data/local/tmp sandbox).
if [ -r '{quota}' ]; then
  q=$(cat '{quota}')
  used=$(du -sk '{sandbox}' 2>/dev/null | cut -f1)
  awk -v q="$q" -v u="${{used:-0}}" 'BEGIN {{
    tot = int(q / 1024); avail = tot - u; if (avail < 0) avail = 0
    pct = tot > 0 ? int((u * 100 + tot - 1) / tot) : 100
    printf "Filesystem       1K-blocks     Used Available Use%% Mounted on\n"
    printf "/dev/block/dm-46 %9d %8d %9d %3d%% /data\n", tot, u, avail, pct }}'
  exit 0
fi
exec /bin/df "$@"
"""


# --------------------------------------------------------------------------- streams
class StreamClosed(Exception):
    pass


class Stream:
    def __init__(self, conn: "Connection", local_id: int, remote_id: int, service: str):
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.service = service
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.can_send = asyncio.Event()
        self.can_send.set()
        self.closed = False
        self.task: asyncio.Task | None = None
        self.proc: asyncio.subprocess.Process | None = None

    # device -> host
    async def write(self, data: bytes) -> None:
        step = self.conn.max_payload
        for i in range(0, len(data), step):
            if self.closed:
                raise StreamClosed()
            await asyncio.wait_for(self.can_send.wait(), ACK_TIMEOUT)
            if self.closed:
                raise StreamClosed()
            self.can_send.clear()
            await self.conn.send(A_WRTE, self.local_id, self.remote_id, data[i:i + step])

    def on_okay(self) -> None:
        self.can_send.set()

    # host -> device
    def on_write(self, data: bytes) -> None:
        self.inbox.put_nowait(data)

    async def recv(self) -> bytes | None:
        """Next chunk the host wrote (acknowledged now), or None once the stream is closed."""
        data = await self.inbox.get()
        if data is None:
            self.inbox.put_nowait(None)
            return None
        if not self.closed:
            await self.conn.send(A_OKAY, self.local_id, self.remote_id)
        return data

    async def close(self) -> None:
        """Close from our side: CLSE to the host, once."""
        if not self.closed:
            self.closed = True
            self.conn.streams.pop(self.local_id, None)
            with contextlib.suppress(ConnectionError, asyncio.TimeoutError, OSError):
                await self.conn.send(A_CLSE, self.local_id, self.remote_id)
        self._wake()

    def on_host_close(self) -> None:
        """The host closed the stream: answer CLSE, stop what runs behind it."""
        if not self.closed:
            self.closed = True
            self.conn.spawn(self.conn.send_quiet(A_CLSE, self.local_id, self.remote_id))
        self._wake()
        kill_group(self.proc)

    def abort(self) -> None:
        self.closed = True
        self._wake()
        kill_group(self.proc)
        if self.task and not self.task.done():
            self.task.cancel()

    def _wake(self) -> None:
        self.can_send.set()
        self.inbox.put_nowait(None)


def kill_group(proc: asyncio.subprocess.Process | None) -> None:
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)

    async def _later(p=proc):
        await asyncio.sleep(2)
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)

    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop().create_task(_later())


class ByteReader:
    def __init__(self, stream: Stream):
        self.stream = stream
        self.buf = bytearray()

    async def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = await self.stream.recv()
            if data is None:
                raise StreamClosed()
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


# --------------------------------------------------------------------------- services
async def shell_service(stream: Stream, cfg: Config, cmd: str, v2: bool) -> None:
    argv = ["/bin/sh", "-c", map_command(cmd, cfg.sandbox)] if cmd else ["/bin/sh"]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if v2 else asyncio.subprocess.STDOUT,
        cwd=cfg.sandbox, env=cfg.env(), start_new_session=True)
    stream.proc = proc
    log.info("stream %d: %s pid %d", stream.local_id, stream.service[:200], proc.pid)

    async def send(kind: int, data: bytes) -> None:
        if not data:
            return
        if v2:
            await stream.write(bytes([kind]) + struct.pack("<I", len(data)) + data)
        else:
            await stream.write(data)

    async def pump(reader: asyncio.StreamReader, kind: int) -> None:
        mapper = OutputMapper(cfg.sandbox)
        with contextlib.suppress(StreamClosed, ConnectionError, asyncio.TimeoutError):
            while True:
                chunk = await reader.read(64 * 1024)
                if not chunk:
                    break
                await send(kind, mapper.feed(chunk))
            await send(kind, mapper.flush())
        # keep draining after the host went away so the child never blocks on a full pipe
        while await reader.read(64 * 1024):
            pass

    async def feed_stdin() -> None:
        buf = b""
        assert proc.stdin is not None
        try:
            while True:
                data = await stream.recv()
                if data is None:
                    kill_group(proc)
                    return
                if not v2:
                    proc.stdin.write(data)
                    await proc.stdin.drain()
                    continue
                buf += data
                while len(buf) >= 5:
                    kind, length = buf[0], struct.unpack("<I", buf[1:5])[0]
                    if len(buf) < 5 + length:
                        break
                    payload, buf = buf[5:5 + length], buf[5 + length:]
                    if kind == 0:
                        proc.stdin.write(payload)
                        await proc.stdin.drain()
                    elif kind == 4:
                        proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass

    stdin_task = asyncio.create_task(feed_stdin())
    pumps = [pump(proc.stdout, 1)]
    if v2:
        pumps.append(pump(proc.stderr, 2))
    try:
        await asyncio.gather(*pumps)
        rc = await proc.wait()
        code = rc if rc >= 0 else 128 - rc
        log.info("stream %d: exit %d", stream.local_id, code)
        if v2 and not stream.closed:
            with contextlib.suppress(StreamClosed, ConnectionError, asyncio.TimeoutError):
                await stream.write(bytes([3]) + struct.pack("<I", 1) + bytes([code & 0xFF]))
    finally:
        stdin_task.cancel()
        kill_group(proc)
        await stream.close()


def _stat_tuple(host: str | None) -> tuple[int, int, int]:
    if host is None:
        return (0, 0, 0)
    try:
        st = os.lstat(host)
    except OSError:
        return (0, 0, 0)
    return (st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, int(st.st_mtime) & 0xFFFFFFFF)


def _fail(message: str) -> bytes:
    raw = message.encode()
    return b"FAIL" + struct.pack("<I", len(raw)) + raw


def _errno_message(prefix: str, err: int) -> str:
    return f"{prefix}: {os.strerror(err)}"


async def sync_service(stream: Stream, cfg: Config) -> None:
    reader = ByteReader(stream)
    try:
        while True:
            head = await reader.read(8)
            ident, length = head[:4], struct.unpack("<I", head[4:])[0]
            if ident == b"QUIT":
                return
            if ident not in (b"STAT", b"LIST", b"SEND", b"RECV"):
                await stream.write(_fail(f"unknown sync command {ident!r}"))
                return
            if length > SYNC_PATH_MAX:
                await stream.write(_fail("path too long"))
                return
            path = (await reader.read(length)).decode("utf-8", "surrogateescape")
            log.info("stream %d: sync %s %s", stream.local_id, ident.decode(), path)
            if ident == b"STAT":
                await stream.write(b"STAT" + struct.pack("<III", *_stat_tuple(cfg.resolve(path, False))))
            elif ident == b"LIST":
                await stream.write(_list(cfg.resolve(path, False)))
            elif ident == b"RECV":
                await _recv(stream, cfg, path)
            elif not await _send(stream, reader, cfg, path):
                return
    except StreamClosed:
        return
    finally:
        await stream.close()


def _list(host: str | None) -> bytes:
    out = bytearray()
    if host is not None and os.path.isdir(host):
        names = [".", ".."]
        with contextlib.suppress(OSError):
            names += sorted(os.listdir(host))
        for name in names:
            mode, size, mtime = _stat_tuple(os.path.join(host, name))
            raw = name.encode("utf-8", "surrogateescape")
            out += b"DENT" + struct.pack("<IIII", mode, size, mtime, len(raw)) + raw
    out += b"DONE" + bytes(16)
    return bytes(out)


async def _recv(stream: Stream, cfg: Config, path: str) -> None:
    host = cfg.resolve(path, False)
    if host is None:
        await stream.write(_fail(_errno_message("open failed", errno.EACCES)))
        return
    try:
        f = open(host, "rb")
    except OSError as exc:
        await stream.write(_fail(_errno_message("open failed", exc.errno or errno.EIO)))
        return
    with f:
        batch = bytearray()
        while True:
            try:
                chunk = f.read(SYNC_DATA_MAX)
            except OSError as exc:
                await stream.write(bytes(batch) + _fail(_errno_message("read failed", exc.errno or errno.EIO)))
                return
            if not chunk:
                break
            batch += b"DATA" + struct.pack("<I", len(chunk)) + chunk
            if len(batch) >= stream.conn.max_payload:
                await stream.write(bytes(batch))
                batch.clear()
        await stream.write(bytes(batch) + b"DONE" + bytes(4))


async def _discard_until_done(reader: ByteReader) -> None:
    while True:
        head = await reader.read(8)
        ident, length = head[:4], struct.unpack("<I", head[4:])[0]
        if ident == b"DONE":
            return
        if ident != b"DATA" or length > SYNC_DATA_MAX:
            raise StreamClosed()
        await reader.read(length)


async def _send(stream: Stream, reader: ByteReader, cfg: Config, spec: str) -> bool:
    """One SEND; True to keep serving this sync stream, False to end it (as adbd does on failure)."""
    path, comma, mode_s = spec.rpartition(",")
    if not comma:
        path, mode_s = spec, "33188"
    try:
        mode = int(mode_s)
    except ValueError:
        mode = 0o100644
    faults = read_faults(cfg.faults_path)
    host = cfg.resolve(path, True)

    async def fail(message: str) -> bool:
        log.info("stream %d: SEND %s failed: %s", stream.local_id, path, message)
        await stream.write(_fail(message))
        with contextlib.suppress(StreamClosed):
            await _discard_until_done(reader)
        return False

    if host is None:
        return await fail(_errno_message("couldn't create file", errno.EACCES))
    try:
        os.makedirs(os.path.dirname(host), exist_ok=True)
    except OSError as exc:
        return await fail(_errno_message("secure_mkdirs failed", exc.errno or errno.EIO))
    if os.path.isdir(host):
        return await fail(_errno_message("couldn't create file", errno.EISDIR))
    quota = faults.get("quota_bytes")
    drop = faults.get("drop_after_bytes")
    used = 0
    if quota is not None:
        used = tree_bytes(cfg.sandbox)
        with contextlib.suppress(OSError):
            used -= os.lstat(host).st_size  # overwritten
    try:
        f = open(host, "wb")
    except OSError as exc:
        return await fail(_errno_message("couldn't create file", exc.errno or errno.EIO))
    received = 0
    with f:
        while True:
            head = await reader.read(8)
            ident, length = head[:4], struct.unpack("<I", head[4:])[0]
            if ident == b"DONE":
                break
            if ident != b"DATA":
                f.close()
                os.unlink(host)
                return await fail(f"invalid data message: expected DATA or DONE, got {ident!r}")
            if length > SYNC_DATA_MAX:
                f.close()
                os.unlink(host)
                await stream.write(_fail("data length too large"))
                return False
            data = await reader.read(length)
            if drop is not None and received + len(data) >= drop:
                keep = max(0, drop - received)
                f.write(data[:keep])
                f.flush()
                f.close()
                if not faults.get("drop_keep_partial", True):
                    os.unlink(host)
                faults.pop("drop_after_bytes", None)
                write_faults(cfg.faults_path, faults)
                log.warning("fault: dropping the connection after %d bytes of %s", received + keep, path)
                stream.conn.abort()
                raise StreamClosed()
            received += len(data)
            if quota is not None and used + received > quota:
                f.close()
                os.unlink(host)
                return await fail(_errno_message("write failed", errno.ENOSPC))
            try:
                f.write(data)
            except OSError as exc:
                f.close()
                with contextlib.suppress(OSError):
                    os.unlink(host)
                return await fail(_errno_message("write failed", exc.errno or errno.EIO))
    os.chmod(host, mode & 0o7777 or 0o644)
    mtime = length or int(time.time())
    os.utime(host, (mtime, mtime))
    await stream.write(b"OKAY" + bytes(4))
    log.info("stream %d: SEND %s ok, %d bytes", stream.local_id, path, received)
    return True


# --------------------------------------------------------------------------- transport
class Connection:
    """One TCP connection from the adb server = one adb transport."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cfg: Config):
        self.reader = reader
        self.writer = writer
        self.cfg = cfg
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.version = VERSION
        self.max_payload = 4096
        self.online = False
        self.closed = False
        self.tasks: set[asyncio.Task] = set()
        self.peer = writer.get_extra_info("peername")

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, (StreamClosed, ConnectionError, asyncio.TimeoutError)):
            log.error("service failed: %r", exc, exc_info=exc)

    async def send(self, cmd: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        if self.closed:
            raise ConnectionError("transport closed")
        checksum = 0 if self.version >= VERSION_SKIP_CHECKSUM else sum(data) & 0xFFFFFFFF
        self.writer.write(struct.pack("<6I", cmd, arg0, arg1, len(data), checksum, cmd ^ 0xFFFFFFFF) + data)
        await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT)

    async def send_quiet(self, cmd: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError, OSError):
            await self.send(cmd, arg0, arg1, data)

    def abort(self) -> None:
        """Kill the transport: every stream and process behind it, then the socket."""
        if self.closed:
            return
        self.closed = True
        for stream in list(self.streams.values()):
            stream.abort()
        self.streams.clear()
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    async def run(self) -> None:
        log.info("transport from %s", self.peer)
        got_cnxn = False
        try:
            while not self.closed:
                # An idle transport is normal (the server keeps it for hours): after the
                # handshake, reads wait; writes and started messages have timeouts.
                header = await asyncio.wait_for(self.reader.readexactly(24),
                                                None if got_cnxn else HANDSHAKE_TIMEOUT)
                cmd, arg0, arg1, length, checksum, magic = struct.unpack("<6I", header)
                if magic != cmd ^ 0xFFFFFFFF or length > 16 * 1024 * 1024:
                    log.warning("bad header %r: closing", header)
                    break
                data = await asyncio.wait_for(self.reader.readexactly(length), PAYLOAD_TIMEOUT) if length else b""
                if cmd == A_CNXN:
                    got_cnxn = True
                await self.handle(cmd, arg0, arg1, data)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError, OSError) as exc:
            log.info("transport from %s ended: %s", self.peer, type(exc).__name__)
        finally:
            self.abort()
            for task in list(self.tasks):
                task.cancel()

    async def go_online(self) -> None:
        self.online = True
        await self.send(A_CNXN, self.version, MAX_PAYLOAD, self.cfg.banner())
        log.info("online (version %#x, max payload %d)", self.version, self.max_payload)

    async def handle(self, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        if cmd == A_CNXN:
            self.version = min(arg0, VERSION)
            self.max_payload = max(4096, min(arg1, MAX_PAYLOAD))
            log.info("CNXN from host: version %#x maxdata %d %r", arg0, arg1, data[:200])
            if self.cfg.offline:
                return  # never answer: the server keeps the device "offline"
            if self.online:  # the host restarted its side of the transport: forget old streams
                for stream in list(self.streams.values()):
                    stream.abort()
                self.streams.clear()
                await self.go_online()
                return
            if self.cfg.auth in ("never", "accept") and not self.online:
                await self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
                return
            if not self.online:
                await self.go_online()
            return
        if cmd == A_AUTH:
            if self.online:
                return
            if self.cfg.auth == "accept":
                await self.go_online()  # as if the user tapped "Allow"
            elif arg0 == AUTH_SIGNATURE:
                await self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))  # signature from an unknown key
            # AUTH_RSAPUBLICKEY with auth="never": the prompt stays on screen forever
            return
        if not self.online:
            return
        if cmd == A_OPEN:
            await self.open(arg0, data.rstrip(b"\0").decode("utf-8", "surrogateescape"))
        elif cmd == A_OKAY:
            stream = self.streams.get(arg1)
            if stream:
                stream.on_okay()
        elif cmd == A_WRTE:
            stream = self.streams.get(arg1)
            if stream:
                stream.on_write(data)
            else:
                await self.send(A_CLSE, 0, arg0)
        elif cmd == A_CLSE:
            stream = self.streams.pop(arg1, None)
            if stream:
                stream.on_host_close()

    async def open(self, remote_id: int, service: str) -> None:
        runner = self.service(service)
        if runner is None:
            log.info("refused service %r", service[:200])
            await self.send(A_CLSE, 0, remote_id)
            return
        local_id = self.next_id
        self.next_id += 1
        stream = Stream(self, local_id, remote_id, service)
        self.streams[local_id] = stream
        await self.send(A_OKAY, local_id, remote_id)
        stream.task = self.spawn(self._guard(stream, runner))

    @staticmethod
    async def _guard(stream: Stream, runner) -> None:
        """Run a service; whatever happens, the host sees the stream closed."""
        try:
            await runner(stream)
        except (StreamClosed, ConnectionError, asyncio.TimeoutError):
            pass
        except Exception:
            log.exception("service %r failed", stream.service[:200])
        finally:
            await stream.close()

    def service(self, service: str):
        cfg = self.cfg
        if service.startswith("shell"):
            head, sep, cmd = service.partition(":")
            if not sep:
                return None
            args = head.split(",")[1:] if "," in head else []
            if head != "shell" and not head.startswith("shell,"):
                return None
            v2 = "v2" in args
            return lambda s: shell_service(s, cfg, cmd, v2)
        if service.startswith("exec:"):
            cmd = service[len("exec:"):]
            return lambda s: shell_service(s, cfg, cmd, False)
        if service == "sync:":
            return lambda s: sync_service(s, cfg)
        return None


# --------------------------------------------------------------------------- server
async def serve(cfg: Config, port: int, ready_file: Path | None) -> None:
    connections: set[Connection] = set()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(reader, writer, cfg)
        connections.add(conn)
        try:
            await conn.run()
        finally:
            connections.discard(conn)

    server = await asyncio.start_server(on_client, "127.0.0.1", port, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    log.info("listening on 127.0.0.1:%d (auth=%s offline=%s sandbox=%s)", bound, cfg.auth, cfg.offline, cfg.sandbox)
    if ready_file:
        tmp = ready_file.with_name(ready_file.name + ".part")
        tmp.write_text(json.dumps({"port": bound, "pid": os.getpid()}))
        os.replace(tmp, ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
        log.info("stopping")
        procs = [st.proc for conn in connections for st in conn.streams.values() if st.proc is not None]
        for conn in list(connections):
            conn.abort()  # SIGTERM to every command's process group
        deadline = time.monotonic() + 2
        while any(p.returncode is None for p in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="adb device emulator standing in for a Pixel 8 (loopback only)")
    ap.add_argument("--dir", required=True, help="state folder of this device (bin/, props.txt, faults.json)")
    ap.add_argument("--sandbox", help="host folder standing in for /data/local/tmp (default DIR/data_local_tmp)")
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    ap.add_argument("--auth", choices=["none", "never", "accept"], default="none",
                    help="none: no AUTH; never: unauthorized forever; accept: AUTH, then accepted")
    ap.add_argument("--offline", action="store_true", help="never answer CNXN (device stays offline)")
    ap.add_argument("--serialno", help="ro.serialno to report")
    ap.add_argument("--ready-file", help="write {port, pid} JSON here once listening")
    args = ap.parse_args(argv)
    if args.port and 5554 <= args.port <= 5585:
        ap.error("ports 5554-5585 are probed by the adb server as emulators; use 6000 or higher")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    state = Path(args.dir).resolve()
    sandbox = Path(args.sandbox) if args.sandbox else state / "data_local_tmp"
    sandbox.mkdir(parents=True, exist_ok=True)
    props = {"ro.serialno": args.serialno} if args.serialno else None
    cfg = Config(state, sandbox, auth=args.auth, offline=args.offline, props=props)
    cfg.install_tools()
    asyncio.run(serve(cfg, args.port, Path(args.ready_file) if args.ready_file else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
