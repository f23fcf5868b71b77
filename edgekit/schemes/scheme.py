"""Quantization schemes as data: ordered (module pattern, bits) rules, first match wins.

A :class:`Scheme` says how wide every weight is (2, 4 or 8 bits with one scale per
output channel, or kept float), whether activations are static int8 and whether
outputs are int8. Patterns are Python regexes searched (``re.search``) in Hugging Face
module names such as ``model.language_model.layers.20.mlp.gate_proj``; the first rule
whose pattern matches decides, ``default_weight_bits`` applies when none does.

Patterns may name layer sets of the model they are applied to, expanded by
:meth:`Scheme.resolve` from the preset: ``{decode_layers}`` (the KV-shared layers),
``{kv_layers}`` (the others), ``{full_attention_layers}``, ``{sliding_layers}``.
This is how one wNa8o8 file puts the decode-layer MLPs of both E2B and tiny at 2 bits.

Schemes round-trip through :meth:`Scheme.to_dict` / :meth:`Scheme.from_dict` (with a
format version) and TOML (:func:`load_scheme_file`, :func:`dump_scheme_toml`).
Built-ins live in ``edgekit/schemes/data/*.toml``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

from edgekit import tomlio
from edgekit.errors import ConfigError, UsageError

FORMAT_VERSION = 1
VALID_BITS = (2, 4, 8)
FLOAT = "float"  # how "keep float" is written in files and dicts
ACTIVATIONS = ("int8_static", "float")
OUTPUTS = ("int8", "float")
GRANULARITIES = ("channel",)
FLOAT_DTYPES = ("float32", "float16")
KV_CACHE = ("float", "int8")
PLACEHOLDERS = ("decode_layers", "kv_layers", "full_attention_layers", "sliding_layers")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

DATA_DIR = Path(__file__).resolve().parent / "data"
# built-in name -> data file per bit map ("e2b" map for e2b and tiny, "e4b" map for e4b)
BUILTINS: dict[str, dict[str, str]] = {
    "wNa8o8": {"e2b": "wNa8o8-e2b.toml", "e4b": "wNa8o8-e4b.toml"},
    "fp16": {"e2b": "fp16.toml", "e4b": "fp16.toml"},
}

_KEYS_REQUIRED = ("name", "default_weight_bits", "activations", "outputs", "rules")
_KEYS_OPTIONAL = ("format", "description", "version", "weight_granularity", "float_dtype", "kv_cache", "resolved_for")
_RULE_KEYS = ("pattern", "bits", "note")


@dataclass(frozen=True)
class Rule:
    """One weight rule: modules whose name matches ``pattern`` get ``bits`` (None = keep float)."""

    pattern: str
    bits: int | None
    note: str = ""

    def __post_init__(self) -> None:
        if self.bits is not None and (isinstance(self.bits, bool) or self.bits not in VALID_BITS):
            raise ConfigError(f"rule {self.pattern!r}: {self.bits!r} bits is not supported (2, 4, 8 or None)")
        try:
            re.compile(expand_placeholders(self.pattern, {p: (0, 1) for p in PLACEHOLDERS}))
        except (re.error, TypeError) as exc:
            raise ConfigError(f"rule {self.pattern!r}: invalid regular expression ({exc})") from exc

    def matches(self, module_name: str) -> bool:
        return _compiled(self.pattern).search(module_name) is not None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"pattern": self.pattern, "bits": FLOAT if self.bits is None else self.bits}
        if self.note:
            d["note"] = self.note
        return d


class GroupBits(NamedTuple):
    """A group of modules (layer ranges collapsed) and the width its weights get."""

    group: str
    bits: int | None


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    version: int
    weight_rules: tuple[Rule, ...]
    default_weight_bits: int | None
    activations: str  # "int8_static" | "float"
    outputs: str  # "int8" | "float"
    weight_granularity: str = "channel"
    float_dtype: str = "float32"  # dtype of weights kept float ("float16" for the fp16 baseline)
    kv_cache: str = "float"  # "float" | "int8"
    resolved_for: str | None = None  # preset name once placeholders are expanded

    def __post_init__(self) -> None:
        where = f"scheme {self.name!r}"
        if self.default_weight_bits is not None and (
                isinstance(self.default_weight_bits, bool) or self.default_weight_bits not in VALID_BITS):
            raise ConfigError(f"{where}: default_weight_bits {self.default_weight_bits!r} is not 2, 4, 8 or None")
        for key, value, choices in (("activations", self.activations, ACTIVATIONS), ("outputs", self.outputs, OUTPUTS),
                                    ("weight_granularity", self.weight_granularity, GRANULARITIES),
                                    ("float_dtype", self.float_dtype, FLOAT_DTYPES), ("kv_cache", self.kv_cache, KV_CACHE)):
            if value not in choices:
                raise ConfigError(f"{where}: {key} {value!r} is not one of {', '.join(choices)}")
        if not all(isinstance(r, Rule) for r in self.weight_rules):
            raise ConfigError(f"{where}: weight_rules must be Rule objects")
        if not isinstance(self.weight_rules, tuple):
            object.__setattr__(self, "weight_rules", tuple(self.weight_rules))

    # ------------------------------------------------------------ behaviour
    @property
    def has_placeholders(self) -> bool:
        return any(_PLACEHOLDER_RE.search(r.pattern) for r in self.weight_rules)

    @property
    def is_float(self) -> bool:
        """True when nothing is quantized (weights, activations and outputs all float)."""
        return (
            self.default_weight_bits is None
            and all(r.bits is None for r in self.weight_rules)
            and self.activations == "float"
            and self.outputs == "float"
        )

    @property
    def static_activations(self) -> bool:
        return self.activations == "int8_static"

    @property
    def float16_weights(self) -> bool:
        """True for the fp16 baseline: nothing quantized, weights stored as float16 (XNNPack unpacks
        them to float32 when it runs them)."""
        return self.is_float and self.float_dtype == "float16"

    def rule_for(self, module_name: str) -> Rule | None:
        """The first rule whose pattern is found in ``module_name`` (None: the default applies)."""
        if self.has_placeholders:
            raise ValueError(f"scheme {self.name} has layer placeholders: call resolve(preset) first")
        for rule in self.weight_rules:
            if rule.matches(module_name):
                return rule
        return None

    def bits_for(self, module_name: str) -> int | None:
        """Weight width for a Hugging Face module name; None means keep float."""
        rule = self.rule_for(module_name)
        return self.default_weight_bits if rule is None else rule.bits

    def resolve(self, preset) -> "Scheme":
        """Expand the layer placeholders from ``preset`` (a Preset or preset name)."""
        from edgekit.models.presets import get_preset

        p = get_preset(preset)
        sets = {
            "decode_layers": p.decode_layers,
            "kv_layers": tuple(i for i in range(p.num_layers) if i not in p.decode_layers),
            "full_attention_layers": p.full_attention_layers,
            "sliding_layers": tuple(i for i, t in enumerate(p.layer_types) if t == "sliding_attention"),
        }
        rules = tuple(replace(r, pattern=expand_placeholders(r.pattern, sets)) for r in self.weight_rules)
        return replace(self, weight_rules=rules, resolved_for=p.name)

    def describe_for(self, preset, *, text_only: bool = False) -> list[GroupBits]:
        """(module group, bits) for every quantizable module of ``preset``, layer ranges collapsed.

        Groups are module paths with the layer index replaced by the range of layers that
        share the width, e.g. ``("model.language_model.layers.[6-9].mlp", 2)``.
        """
        from edgekit.models.presets import get_preset

        p = get_preset(preset)
        scheme = self if self.resolved_for == p.name and not self.has_placeholders else self.resolve(p)
        return [GroupBits(g, b) for g, b in _group(scheme, quantizable_modules(p, text_only=text_only))]

    def module_bits(self, preset, *, text_only: bool = False) -> dict[str, int | None]:
        """Width of every quantizable (Linear / Embedding) module of ``preset``."""
        from edgekit.models.presets import get_preset

        p = get_preset(preset)
        scheme = self if self.resolved_for == p.name and not self.has_placeholders else self.resolve(p)
        return {m: scheme.bits_for(m) for m in quantizable_modules(p, text_only=text_only)}

    # ------------------------------------------------------------ round trips
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "version": self.version,
            "default_weight_bits": FLOAT if self.default_weight_bits is None else self.default_weight_bits,
            "activations": self.activations,
            "outputs": self.outputs,
            "weight_granularity": self.weight_granularity,
            "float_dtype": self.float_dtype,
            "kv_cache": self.kv_cache,
        }
        if self.resolved_for is not None:
            d["resolved_for"] = self.resolved_for
        d["rules"] = [r.to_dict() for r in self.weight_rules]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "scheme") -> "Scheme":
        """Validate and build; ConfigError names ``source`` and the offending key."""
        return _from_dict(data, source)

    def to_toml(self) -> str:
        return dump_scheme_toml(self)


# ================================================================ validation
def _err(source: str, key: str, msg: str, hint: str | None = None) -> ConfigError:
    return ConfigError(f"{source}: {key}: {msg}",
                       hint=hint or "fix the scheme file (see edgekit/schemes/data/wNa8o8-e2b.toml for an example)")


def _bits(value: Any, source: str, key: str) -> int | None:
    if value is None or value == FLOAT:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(source, key, f"{value!r} is not a bit width: use 2, 4, 8 or \"float\"")
    if value not in VALID_BITS:
        raise _err(source, key, f"{value} bits is not supported: use 2, 4, 8 or \"float\"")
    return value


def _str(data: Mapping[str, Any], key: str, source: str, choices: Iterable[str] | None = None,
         default: str | None = None) -> str:
    if key not in data:
        if default is None:
            raise _err(source, key, "missing")
        return default
    v = data[key]
    if not isinstance(v, str):
        raise _err(source, key, f"must be a string, got {type(v).__name__} {v!r}")
    if choices is not None and v not in tuple(choices):
        raise _err(source, key, f"{v!r} is not one of {', '.join(repr(c) for c in choices)}")
    return v


def _from_dict(data: Mapping[str, Any], source: str) -> Scheme:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a scheme must be a table/object, got {type(data).__name__}")
    unknown = [k for k in data if k not in _KEYS_REQUIRED + _KEYS_OPTIONAL]
    if unknown:
        raise _err(source, unknown[0], "unknown key; allowed keys: " + ", ".join(_KEYS_REQUIRED + _KEYS_OPTIONAL))
    for k in _KEYS_REQUIRED:
        if k not in data:
            raise _err(source, k, "missing (required keys: " + ", ".join(_KEYS_REQUIRED) + ")")
    fmt = data.get("format", FORMAT_VERSION)
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        raise _err(source, "format", f"must be an integer, got {fmt!r}")
    if fmt > FORMAT_VERSION or fmt < 1:
        raise _err(source, "format", f"format {fmt} is not supported (this edgekit reads format {FORMAT_VERSION})",
                   hint="upgrade edgekit or rewrite the file in format 1")
    name = _str(data, "name", source)
    if not _NAME_RE.match(name):
        raise _err(source, "name", f"{name!r}: use letters, digits and _ . + - (no spaces)")
    description = _str(data, "description", source, default="")
    version = data.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _err(source, "version", f"must be a positive integer, got {version!r}")
    default_bits = _bits(data["default_weight_bits"], source, "default_weight_bits")
    activations = _str(data, "activations", source, ACTIVATIONS)
    outputs = _str(data, "outputs", source, OUTPUTS)
    granularity = _str(data, "weight_granularity", source, GRANULARITIES, default="channel")
    float_dtype = _str(data, "float_dtype", source, FLOAT_DTYPES, default="float32")
    kv_cache = _str(data, "kv_cache", source, KV_CACHE, default="float")
    resolved_for = data.get("resolved_for")
    if resolved_for is not None and not isinstance(resolved_for, str):
        raise _err(source, "resolved_for", f"must be a string, got {resolved_for!r}")
    if outputs == "int8" and activations != "int8_static":
        raise _err(source, "outputs", "int8 outputs need activations = \"int8_static\"")

    raw_rules = data["rules"]
    if not isinstance(raw_rules, (list, tuple)):
        raise _err(source, "rules", f"must be a list of {{pattern, bits}} tables, got {type(raw_rules).__name__}")
    rules = []
    for i, r in enumerate(raw_rules):
        key = f"rules[{i}]"
        if not isinstance(r, Mapping):
            raise _err(source, key, f"must be a table with pattern and bits, got {r!r}")
        bad = [k for k in r if k not in _RULE_KEYS]
        if bad:
            raise _err(source, f"{key}.{bad[0]}", "unknown key; a rule has pattern, bits and an optional note")
        if "pattern" not in r:
            raise _err(source, f"{key}.pattern", "missing")
        if "bits" not in r:
            raise _err(source, f"{key}.bits", "missing (2, 4, 8 or \"float\")")
        pattern = r["pattern"]
        if not isinstance(pattern, str) or not pattern:
            raise _err(source, f"{key}.pattern", f"must be a non-empty string, got {pattern!r}")
        for ph in _PLACEHOLDER_RE.findall(pattern):
            if ph not in PLACEHOLDERS:
                raise _err(source, f"{key}.pattern", f"unknown placeholder {{{ph}}}; known: "
                           + ", ".join("{" + p + "}" for p in PLACEHOLDERS))
        try:
            re.compile(expand_placeholders(pattern, {p: (0, 1) for p in PLACEHOLDERS}))
        except re.error as exc:
            raise _err(source, f"{key}.pattern", f"invalid regular expression {pattern!r}: {exc}") from exc
        note = r.get("note", "")
        if not isinstance(note, str):
            raise _err(source, f"{key}.note", f"must be a string, got {note!r}")
        rules.append(Rule(pattern, _bits(r["bits"], source, f"{key}.bits"), note))
    return Scheme(name=name, description=description, version=version, weight_rules=tuple(rules),
                  default_weight_bits=default_bits, activations=activations, outputs=outputs,
                  weight_granularity=granularity, float_dtype=float_dtype, kv_cache=kv_cache,
                  resolved_for=resolved_for)


# ================================================================ helpers
_COMPILED: dict[str, re.Pattern] = {}


def _compiled(pattern: str) -> re.Pattern:
    c = _COMPILED.get(pattern)
    if c is None:
        c = _COMPILED[pattern] = re.compile(pattern)
    return c


def expand_placeholders(pattern: str, sets: Mapping[str, Iterable[int]]) -> str:
    """Replace ``{decode_layers}`` etc. by a non-capturing alternation of layer indices."""

    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in sets:
            return m.group(0)
        idx = list(sets[key])
        if not idx:
            return "(?!)"  # an empty set never matches
        return "(?:" + "|".join(str(i) for i in sorted(idx, reverse=True)) + ")"

    return _PLACEHOLDER_RE.sub(sub, pattern)


def quantizable_modules(preset, *, text_only: bool = False) -> list[str]:
    """Hugging Face names of the Linear and Embedding modules of ``preset`` (meta device)."""
    from edgekit.models.presets import get_preset

    p = get_preset(preset)
    return list(_quantizable(p.name, text_only))


_QUANTIZABLE_CACHE: dict[tuple[str, bool], tuple[str, ...]] = {}


def _quantizable(name: str, text_only: bool) -> tuple[str, ...]:
    key = (name, text_only)
    if key not in _QUANTIZABLE_CACHE:
        import torch.nn as nn

        from edgekit.models.presets import get_preset

        model = get_preset(name).meta_model(1, text_only=text_only)
        names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
        _QUANTIZABLE_CACHE[key] = tuple(names)
    return _QUANTIZABLE_CACHE[key]


_LAYER_RE = re.compile(r"\.layers\.(\d+)(?=\.|$)")


def _group(scheme: Scheme, modules: Iterable[str]) -> list[tuple[str, int | None]]:
    """Collapse module names into (path with layer ranges, bits) groups, in model order.

    The layer index becomes a range (``layers.[6-9]``); the leaves of a block (``mlp``,
    ``self_attn``, ...) collapse into the block when they all get the same width in every
    layer of the range; a ``.linear`` wrapper child is folded into its parent.
    """
    leaves: list[tuple[str, int, int | None]] = []  # (template, layer or -1, bits)
    for m in modules:
        bits = scheme.bits_for(m)
        name = m[: -len(".linear")] if m.endswith(".linear") else m
        mm = _LAYER_RE.search(name)
        if mm:
            leaves.append((name[: mm.start()] + ".layers.{}" + name[mm.end():], int(mm.group(1)), bits))
        else:
            leaves.append((name, -1, bits))
    # which parents can be collapsed: every layer's leaves under it share one width
    per_parent: dict[str, dict[int, set]] = {}
    for tmpl, layer, bits in leaves:
        if layer < 0 or tmpl.endswith(".layers.{}") or "." not in tmpl:
            continue
        parent = tmpl.rsplit(".", 1)[0]
        if parent.endswith(".layers.{}"):
            continue
        per_parent.setdefault(parent, {}).setdefault(layer, set()).add(bits)
    collapsible = {p for p, by_layer in per_parent.items() if all(len(b) == 1 for b in by_layer.values())}
    buckets: dict[tuple[str, int | None], list[int]] = {}
    for tmpl, layer, bits in leaves:
        if layer >= 0 and "." in tmpl and tmpl.rsplit(".", 1)[0] in collapsible:
            tmpl = tmpl.rsplit(".", 1)[0]
        buckets.setdefault((tmpl, bits), [])
        if layer >= 0 and layer not in buckets[(tmpl, bits)]:
            buckets[(tmpl, bits)].append(layer)
    out = []
    for (tmpl, bits), layers in buckets.items():
        label = tmpl.replace("{}", "[" + _ranges(layers) + "]") if layers else tmpl
        out.append((label, bits))
    return out


def _ranges(xs: list[int]) -> str:
    xs = sorted(set(xs))
    parts, start, prev = [], None, None
    for x in xs:
        if start is None:
            start = prev = x
        elif x == prev + 1:
            prev = x
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = x
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(parts)


# ================================================================ TOML
def dump_scheme_toml(scheme: Scheme) -> str:
    """TOML text of a scheme: top-level keys, then one ``[[rules]]`` table per rule."""
    d = scheme.to_dict()
    d["rules"] = d.pop("rules")  # written last: after the top-level keys
    return tomlio.dumps(d, header=f"edgekit quantization scheme (format {FORMAT_VERSION}); rules: first match wins")


def parse_scheme_toml(text: str, source: str = "scheme") -> Scheme:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}", hint="fix the TOML syntax") from exc
    return _from_dict(data, source)


def load_scheme_file(path: str | Path) -> Scheme:
    """Read and validate one scheme TOML file (ConfigError on anything malformed)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise UsageError(f"scheme file {path} does not exist",
                         hint="pass a built-in scheme name (" + ", ".join(BUILTINS) + ") or a TOML file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})", hint="check the file's permissions") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text", hint="save the scheme file as UTF-8 TOML") from exc
    return parse_scheme_toml(text, str(path))


def list_schemes() -> list[str]:
    return list(BUILTINS)


def _looks_like_path(s: str) -> bool:
    return s.endswith(".toml") or "/" in s or "\\" in s or s.startswith(".")


def load_scheme(name_or_path: str | Path | Scheme, preset=None) -> Scheme:
    """A built-in scheme by name or a scheme TOML file, resolved for ``preset`` if given.

    Built-ins: ``wNa8o8`` (E2B bit map for e2b and tiny, E4B map for e4b) and ``fp16``.
    Unknown name -> UsageError listing the built-ins; malformed file -> ConfigError.
    """
    from edgekit.models.presets import get_preset

    if isinstance(name_or_path, Scheme):
        scheme = name_or_path
        p = get_preset(preset) if preset is not None else None
    else:
        p = get_preset(preset) if preset is not None else None
        s = str(name_or_path)
        builtin = {k.lower(): k for k in BUILTINS}.get(s.lower())
        if builtin is not None and not Path(s).is_file():
            bit_map = p.bit_map if p is not None else "e2b"
            scheme = load_scheme_file(DATA_DIR / BUILTINS[builtin][bit_map])
        elif isinstance(name_or_path, Path) or _looks_like_path(s) or Path(s).is_file():
            scheme = load_scheme_file(s)
        else:
            raise UsageError(f"unknown scheme {s!r}; built-in schemes: {', '.join(BUILTINS)}",
                             hint="pass one of " + ", ".join(BUILTINS) + " or the path of a scheme .toml file")
    if p is not None:
        scheme = scheme.resolve(p)
    return scheme


# ================================================================ QAT checkpoints
def scheme_from_quantization_config(qcfg: Mapping[str, Any], name: str = "qat", source: str = "config.json",
                                    preset=None) -> Scheme:
    """The wNa8o8 scheme a ``quant_method: gemma`` checkpoint's ``quantization_config`` describes.

    ``modules_to_not_convert`` become keep-float rules first (transformers skips a module
    when an entry matches its name's start or its end), then ``module_quant_configs`` in
    order, ``num_bits`` as the default. transformers joins the patterns into one
    alternation (the leftmost match in the name wins); with ``preset`` every quantizable
    module is checked to get the same width under edgekit's first-rule-wins reading, and
    a ConfigError names the first module where they differ.
    """
    if not isinstance(qcfg, Mapping) or qcfg.get("quant_method") != "gemma":
        raise ConfigError(f"{source}: quantization_config is not quant_method 'gemma'")
    default = qcfg.get("num_bits", 4)
    mqc = qcfg.get("module_quant_configs") or {}
    skip = list(qcfg.get("modules_to_not_convert") or [])
    if not isinstance(mqc, Mapping) or not isinstance(skip, list):
        raise ConfigError(f"{source}: quantization_config.module_quant_configs must be an object and "
                          "modules_to_not_convert a list")
    rules: list[dict[str, Any]] = []
    embeddings_float = not qcfg.get("quantize_embeddings", False)
    if embeddings_float:
        rules.append({"pattern": r"embed_tokens(_per_layer)?$", "bits": FLOAT, "note": "quantize_embeddings false"})
    for k in skip:
        if not isinstance(k, str):
            raise ConfigError(f"{source}: quantization_config.modules_to_not_convert: {k!r} is not a string")
        rules.append({"pattern": f"^(?:{k})|{re.escape(k)}$", "bits": FLOAT, "note": f"not converted: {k}"})
    for pattern, opts in mqc.items():
        bits = opts.get("num_bits", default) if isinstance(opts, Mapping) else opts
        rules.append({"pattern": pattern, "bits": bits})
    scheme = _from_dict(
        {
            "name": name,
            "description": "bit map read from a quant_method 'gemma' QAT checkpoint",
            "default_weight_bits": default,
            "activations": "int8_static",
            "outputs": "int8",
            "kv_cache": "int8",
            "rules": rules,
        },
        f"{source}: quantization_config",
    )
    if preset is not None:
        joined = re.compile("|".join(f"(?P<g{i}>{p})" for i, p in enumerate(mqc))) if mqc else None
        opts_list = list(mqc.values())
        for m in quantizable_modules(preset):
            if any(re.match(f"{k}\\.", m) or re.match(k, m) or m.endswith(k) for k in skip):
                hf_bits = None
            elif embeddings_float and re.search(r"embed_tokens(_per_layer)?$", m):
                hf_bits = None
            else:
                hf_bits = default
                hit = joined.search(m) if joined is not None else None
                if hit is not None:
                    i = next(int(g[1:]) for g, v in hit.groupdict().items() if v is not None)
                    o = opts_list[i]
                    hf_bits = o.get("num_bits", default) if isinstance(o, Mapping) else o
            if scheme.bits_for(m) != hf_bits:
                raise ConfigError(
                    f"{source}: quantization_config gives {m} {hf_bits} bits in transformers' reading but "
                    f"{scheme.bits_for(m)} under first-match-wins",
                    hint="reorder module_quant_configs so the first matching pattern is the intended one")
    return scheme
