"""edgekit.tomlio, the one TOML writer (schemes, the stand-ins' profiles): what it writes reads back
with tomllib as the same data."""

from __future__ import annotations

import tomllib

import pytest

from edgekit import tomlio


@pytest.mark.parametrize("data", [
    {"name": "x", "n": 3, "f": 0.25, "b": False, "l": ["a", 'q"uote', "back\\slash", "ü", "it's"]},
    {"t": {"inner": {"deep": [1, 2]}, "s": "line\nbreak\ttab"}, "u": {"weird key": 1, "": 2}},
    {"format": 1, "rules": [{"pattern": r"^lm_head$", "bits": 8}, {"pattern": "x\x01\x7f", "note": "a\rb"}]},
    {"rules": [], "inline": [{"a": 1}, {"b": [True]}], "empty": {}},
])
def test_round_trips(data):
    text = tomlio.dumps(data, "header\nlines")
    assert text.startswith("# header\n# lines\n")
    assert tomllib.loads(text) == {k: v for k, v in data.items()}


def test_values_and_keys():
    assert tomlio.toml_str(r"^a\.b$") == r"'^a\.b$'"  # a regex stays readable
    assert tomlio.toml_str("it's") == '"it\'s"'
    assert tomlio.toml_key("cpu_threads-2") == "cpu_threads-2" and tomlio.toml_key("a b") == '"a b"'
    assert tomlio.toml_value({"a": [1, 2.5]}) == "{ a = [1, 2.5] }"
    with pytest.raises(TypeError):
        tomlio.toml_value(None)
    # tables after the keys, in the order given; arrays of tables one [[name]] per element
    assert tomlio.dumps({"t": {"k": 1}, "a": 2, "r": [{"x": 1}, {"x": 2}]}) == (
        "a = 2\n\n[t]\nk = 1\n\n[[r]]\nx = 1\n\n[[r]]\nx = 2\n")
