"""One base error, specific kinds, each with its exit code and a hint.

The CLI maps every :class:`EdgekitError` to one line ``error: <message>`` plus
``hint: <hint>`` and exits with ``exit_code``; a traceback is printed only when
``EDGEKIT_DEBUG=1``. Library code raises these instead of printing.

Exit codes (stable, documented in the README):

====  =========================================================
code  meaning
====  =========================================================
0     success / gate passed
1     gate failed (a metric crossed its threshold)
2     usage error (bad option, unknown preset/scheme/device)
3     device or infrastructure failure (transport, timeout, run failed)
4     not comparable or insufficient data
5     malformed configuration file (scheme, profile, calibration, thresholds)
6     invalid checkpoint (missing, wrong model, shapes, corrupt, no tokenizer)
7     build failed inside the toolchain
8     not enough resources (memory, disk, disk full)
9     output location not writable
10    inspection found violations (bundle does not match scheme/manifest)
130   interrupted
====  =========================================================
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose."""

    exit_code: int = 2
    kind: str = "error"
    default_hint: str = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:  # one line, no hint
        return self.message


class GateFailed(EdgekitError):
    exit_code = 1
    kind = "gate failed"


class UsageError(EdgekitError):
    exit_code = 2
    kind = "usage error"
    default_hint = "run the command with --help"


class DeviceError(EdgekitError):
    """Device or infrastructure failure: transport, timeout, a failed run."""

    exit_code = 3
    kind = "device error"


class DeviceNotFound(DeviceError):
    kind = "device not found"
    default_hint = "check the cable / network and `edgekit devices`"


class AmbiguousDevice(DeviceError):
    kind = "several devices"
    default_hint = "choose one with --serial or ANDROID_SERIAL"


class DeviceUnauthorized(DeviceError):
    kind = "device unauthorized"
    default_hint = "accept the 'Allow USB debugging' prompt on the phone"


class DeviceOffline(DeviceError):
    kind = "device offline"
    default_hint = "reconnect the device (adb reconnect) and retry"


class StorageFull(DeviceError):
    kind = "storage full"
    default_hint = "free space in the device's work folder"


class PermissionDenied(DeviceError):
    kind = "permission denied"
    default_hint = "pick a work folder the device user can write"


class RuntimeMissing(DeviceError):
    kind = "runtime missing"
    default_hint = "run `edgekit setup --device NAME` first"


class TransportTimeout(DeviceError):
    kind = "timeout"
    default_hint = "check the link; raise the timeout in the device profile"


class HostKeyRejected(DeviceError):
    kind = "unknown host key"
    default_hint = "verify the key and add it to known_hosts, or pass --accept-new-host-key"


class BenchmarkFailed(DeviceError):
    kind = "benchmark failed"


class NotComparable(EdgekitError):
    exit_code = 4
    kind = "not comparable"
    default_hint = "compare records with equal key settings, or pass --allow-mismatch"


class InsufficientData(EdgekitError):
    exit_code = 4
    kind = "insufficient data"
    default_hint = "run more repetitions (--reps)"


class ConfigError(EdgekitError):
    """A malformed file the user gave us: scheme, profile, calibration, thresholds."""

    exit_code = 5
    kind = "invalid configuration"


class CheckpointError(EdgekitError):
    exit_code = 6
    kind = "invalid checkpoint"


class BuildError(EdgekitError):
    exit_code = 7
    kind = "build failed"
    default_hint = "rerun with EDGEKIT_DEBUG=1 for the toolchain's traceback"


class ResourceError(EdgekitError):
    exit_code = 8
    kind = "not enough resources"
    default_hint = "free memory/disk, use --width-div, or pass --force"


class OutputNotWritable(EdgekitError):
    exit_code = 9
    kind = "output not writable"
    default_hint = "choose a writable --output folder"


class InspectionFailed(EdgekitError):
    exit_code = 10
    kind = "inspection failed"


EXIT_INTERRUPTED = 130
