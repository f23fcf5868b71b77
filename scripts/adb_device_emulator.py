#!/usr/bin/env python3
"""Run the adb device emulator (Pixel 8 stand-in); see scripts/targetlib/adbemu.py.

Normally started by `scripts/targets up`. By hand:
  scripts/adb_device_emulator.py --dir /tmp/pixel8 --port 6001 &
  adb connect 127.0.0.1:6001 && adb -s 127.0.0.1:6001 shell getprop ro.product.model
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from targetlib.adbemu import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
