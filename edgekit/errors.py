"""One base error, specific kinds, each with its exit code and a hint.

The CLI maps every :class:`EdgekitError` to one line ``error: <message>`` plus
``hint: <hint>`` and exits with ``exit_code``; a traceback is printed only when
``EDGEKIT_DEBUG=1``. Library code raises these instead of printing.

Exit codes are stable and documented in the README; ``EXIT_CODES`` below is the one
table of them that the kinds here and the CLI take their codes from.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_DEVICE = 3
EXIT_NOT_COMPARABLE = 4
EXIT_CONFIG = 5
EXIT_CHECKPOINT = 6
EXIT_BUILD = 7
EXIT_RESOURCES = 8
EXIT_OUTPUT = 9
EXIT_INSPECTION = 10
EXIT_INTERNAL = 70  # an unexpected exception: a bug in edgekit or a toolchain failure (EX_SOFTWARE)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

# code -> meaning; README's "Exit codes" table and `edgekit --help` say the same
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success / gate passed",
    EXIT_GATE_FAILED: "gate failed (a metric crossed its threshold)",
    EXIT_USAGE: "usage error (bad option, unknown preset/scheme/device)",
    EXIT_DEVICE: "device or infrastructure failure (transport, timeout, run failed)",
    EXIT_NOT_COMPARABLE: "not comparable or insufficient data",
    EXIT_CONFIG: "malformed configuration file (scheme, profile, calibration, thresholds)",
    EXIT_CHECKPOINT: "invalid checkpoint (missing, wrong model, shapes, corrupt, no tokenizer)",
    EXIT_BUILD: "build failed inside the toolchain",
    EXIT_RESOURCES: "not enough resources (memory, disk, disk full)",
    EXIT_OUTPUT: "output location not writable",
    EXIT_INSPECTION: "inspection found violations (bundle does not match scheme/manifest)",
    EXIT_INTERNAL: "internal error (EDGEKIT_DEBUG=1 shows the traceback)",
    EXIT_INTERRUPTED: "interrupted",
}


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose."""

    exit_code: int = EXIT_USAGE
    kind: str = "error"
    default_hint: str = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:  # one line, no hint
        return self.message


class GateFailed(EdgekitError):
    exit_code = EXIT_GATE_FAILED
    kind = "gate failed"


class UsageError(EdgekitError):
    exit_code = EXIT_USAGE
    kind = "usage error"
    default_hint = "run the command with --help"


class DeviceError(EdgekitError):
    """Device or infrastructure failure: transport, timeout, a failed run."""

    exit_code = EXIT_DEVICE
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
    exit_code = EXIT_NOT_COMPARABLE
    kind = "not comparable"
    default_hint = "compare records with equal key settings, or pass --allow-mismatch"


class InsufficientData(EdgekitError):
    exit_code = EXIT_NOT_COMPARABLE
    kind = "insufficient data"
    default_hint = "run more repetitions (--reps)"


class ConfigError(EdgekitError):
    """A malformed file the user gave us: scheme, profile, calibration, thresholds."""

    exit_code = EXIT_CONFIG
    kind = "invalid configuration"


class CheckpointError(EdgekitError):
    exit_code = EXIT_CHECKPOINT
    kind = "invalid checkpoint"


class BuildError(EdgekitError):
    exit_code = EXIT_BUILD
    kind = "build failed"
    default_hint = "rerun with EDGEKIT_DEBUG=1 for the toolchain's traceback"


class ResourceError(EdgekitError):
    exit_code = EXIT_RESOURCES
    kind = "not enough resources"
    default_hint = "free memory/disk, use --width-div, or pass --force"


class OutputNotWritable(EdgekitError):
    exit_code = EXIT_OUTPUT
    kind = "output not writable"
    default_hint = "choose a writable --output folder"


class InspectionFailed(EdgekitError):
    exit_code = EXIT_INSPECTION
    kind = "inspection failed"

