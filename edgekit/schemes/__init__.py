"""Quantization schemes (data: ordered first-match-wins rules) and calibration prompts."""

from edgekit.schemes.scheme import (
    BUILTINS,
    GroupBits,
    Rule,
    Scheme,
    dump_scheme_toml,
    list_schemes,
    load_scheme,
    load_scheme_file,
    parse_scheme_toml,
)

__all__ = [
    "BUILTINS", "GroupBits", "Rule", "Scheme", "dump_scheme_toml", "list_schemes", "load_scheme",
    "load_scheme_file", "parse_scheme_toml",
]
