"""The command line: one small module per command; the only place that imports click."""
