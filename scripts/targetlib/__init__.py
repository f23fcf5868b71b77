"""Local stand-ins for edgekit's device tests (no phone or Pi needed).

* ``sshd``: a real OpenSSH server on 127.0.0.1 standing in for a Raspberry Pi 5.
* ``adbemu``: a device emulator of our own speaking the device side of the adb
  transport protocol, joined to the real adb server with ``adb connect``,
  standing in for a Pixel 8.
* ``stand``: brings both up / down and writes state.json and device profiles.

Standard library only, so ``scripts/targets`` runs with any Python 3.11.
"""
