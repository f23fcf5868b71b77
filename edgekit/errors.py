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
    """Base of every error edgekit raises on purpose.

    A kind is one line: ``class StorageFull(DeviceError, kind="storage full", hint="..."): pass``;
    ``exit_code`` (a name from the table above), ``kind`` and ``hint`` given as class keywords
    are inherited by the kinds below it unless they give their own.
    """

    exit_code: int = EXIT_USAGE
    kind: str = "error"
    default_hint: str = ""

    def __init_subclass__(cls, *, exit_code: int | None = None, kind: str | None = None, hint: str | None = None,
                          **kwargs):
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code
        if kind is not None:
            cls.kind = kind
        if hint is not None:
            cls.default_hint = hint

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:  # one line, no hint
        return self.message


# The kinds: what failed (exit code, one-word kind) and what to do about it (default hint).
class GateFailed(EdgekitError, exit_code=EXIT_GATE_FAILED, kind="gate failed"): pass
class UsageError(EdgekitError, exit_code=EXIT_USAGE, kind="usage error", hint="run the command with --help"): pass
# device or infrastructure failure: transport, timeout, a failed run
class DeviceError(EdgekitError, exit_code=EXIT_DEVICE, kind="device error"): pass
class DeviceNotFound(DeviceError, kind="device not found", hint="check the cable / network and `edgekit devices`"): pass
class AmbiguousDevice(DeviceError, kind="several devices", hint="choose one with --serial or ANDROID_SERIAL"): pass
class DeviceUnauthorized(DeviceError, kind="device unauthorized", hint="accept the 'Allow USB debugging' prompt on the phone"): pass
class DeviceOffline(DeviceError, kind="device offline", hint="reconnect the device (adb reconnect) and retry"): pass
class StorageFull(DeviceError, kind="storage full", hint="free space in the device's work folder"): pass
class PermissionDenied(DeviceError, kind="permission denied", hint="pick a work folder the device user can write"): pass
class RuntimeMissing(DeviceError, kind="runtime missing", hint="run `edgekit setup --device NAME` first"): pass
class TransportTimeout(DeviceError, kind="timeout", hint="check the link; raise the timeout in the device profile"): pass
class HostKeyRejected(DeviceError, kind="unknown host key", hint="verify the key and add it to known_hosts, or pass --accept-new-host-key"): pass
class BenchmarkFailed(DeviceError, kind="benchmark failed"): pass
class NotComparable(EdgekitError, exit_code=EXIT_NOT_COMPARABLE, kind="not comparable", hint="compare records with equal key settings, or pass --allow-mismatch"): pass
class InsufficientData(EdgekitError, exit_code=EXIT_NOT_COMPARABLE, kind="insufficient data", hint="run more repetitions (--reps)"): pass
# a malformed file the user gave us: scheme, profile, calibration, thresholds
class ConfigError(EdgekitError, exit_code=EXIT_CONFIG, kind="invalid configuration"): pass
class CheckpointError(EdgekitError, exit_code=EXIT_CHECKPOINT, kind="invalid checkpoint"): pass
class BuildError(EdgekitError, exit_code=EXIT_BUILD, kind="build failed", hint="rerun with EDGEKIT_DEBUG=1 for the toolchain's traceback"): pass
class ResourceError(EdgekitError, exit_code=EXIT_RESOURCES, kind="not enough resources", hint="free memory/disk, use --width-div, or pass --force"): pass
class OutputNotWritable(EdgekitError, exit_code=EXIT_OUTPUT, kind="output not writable", hint="choose a writable --output folder"): pass
class InspectionFailed(EdgekitError, exit_code=EXIT_INSPECTION, kind="inspection failed"): pass
