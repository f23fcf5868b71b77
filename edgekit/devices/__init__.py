"""Reach devices: profiles (TOML) and one transport protocol over adb, ssh or the local host.

``open_transport(profile, **opts)`` returns a connected :class:`~edgekit.devices.transport.Transport`.
Options: ``serial`` (adb: overrides the profile and ``ANDROID_SERIAL``),
``accept_new_host_key`` (ssh: record an unknown host key instead of refusing it),
``connect_timeout`` / ``command_timeout`` (override the profile's).
"""

from __future__ import annotations

from edgekit.devices.profiles import DeviceProfile, list_profiles, load_profile
from edgekit.devices.transport import PushResult, RemoteStat, ShellResult, Transport, quote_argv

__all__ = [
    "DeviceProfile",
    "PushResult",
    "RemoteStat",
    "ShellResult",
    "Transport",
    "list_profiles",
    "load_profile",
    "open_transport",
    "quote_argv",
]


def open_transport(profile: DeviceProfile | str, **opts) -> Transport:
    """Connect to the device a profile names (adb / ssh / local)."""
    if isinstance(profile, str):
        profile = load_profile(profile)
    connect_s = opts.pop("connect_timeout", None) or profile.timeouts.connect_s
    command_s = opts.pop("command_timeout", None) or profile.timeouts.command_s
    if profile.transport == "local":
        from edgekit.devices.local import LocalTransport

        return LocalTransport(profile.name, command_timeout=command_s, connect_timeout=connect_s)
    if profile.transport == "ssh":
        from edgekit.devices.ssh import SshTransport

        return SshTransport.from_profile(profile, connect_timeout=connect_s, command_timeout=command_s, **opts)
    if profile.transport == "adb":
        from edgekit.devices.adb import AdbTransport

        return AdbTransport.from_profile(profile, connect_timeout=connect_s, command_timeout=command_s, **opts)
    raise ValueError(f"unknown transport {profile.transport!r}")  # profiles.py validates this
