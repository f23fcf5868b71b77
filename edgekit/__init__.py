"""edgekit: build, push, benchmark and gate on-device Gemma 4 bundles."""

__version__ = "0.1.0"
