#!/usr/bin/env python3
"""Public-domain-ish English corpus available offline: the docstrings of Python's stdlib.

Deterministic: modules are visited in sorted order and every docstring is taken once.
The text is split into train / held-out by module name hash so the split is stable;
a docstring found in both (re-exported objects) stays in train only.

    python scripts/tiny_corpus.py OUT_DIR     # writes train.txt and heldout.txt
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import pkgutil
import re
import sys
import warnings
from pathlib import Path

SKIP = re.compile(r"^(test|idlelib|tkinter|turtledemo|lib2to3|ensurepip|antigravity|this|__)")


def _docstrings(module) -> list[str]:
    out, seen = [], set()
    objs = [module] + [v for _, v in sorted(vars(module).items()) if inspect.isclass(v) or inspect.isfunction(v)]
    for obj in objs:
        if getattr(obj, "__module__", module.__name__) != module.__name__ and obj is not module:
            continue
        members = [obj]
        if inspect.isclass(obj):
            members += [m for _, m in sorted(vars(obj).items()) if inspect.isfunction(m)]
        for m in members:
            d = inspect.getdoc(m)
            if d and len(d) > 40 and d not in seen:
                seen.add(d)
                out.append(d.strip())
    return out


def collect() -> dict[str, list[str]]:
    warnings.simplefilter("ignore")
    names = sorted(m.name for m in pkgutil.iter_modules() if not SKIP.match(m.name))
    stdlib = set(sys.stdlib_module_names)
    docs: dict[str, list[str]] = {}
    for name in names:
        if name not in stdlib:
            continue
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        texts = _docstrings(mod)
        if texts:
            docs[name] = texts
    return docs


def main(out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = collect()
    train, held = [], []
    for name, texts in docs.items():
        bucket = held if int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10 == 0 else train
        bucket.extend(texts)
    # Some modules re-export another's objects (struct / _struct, ...): a docstring that is in
    # the train split must not be held out too. Train is unchanged by this filter.
    seen = set(train)
    leaked = sum(t in seen for t in held)
    held = [t for t in held if t not in seen]
    (out_dir / "train.txt").write_text("\n\n".join(train) + "\n")
    (out_dir / "heldout.txt").write_text("\n\n".join(held) + "\n")
    print(f"{len(docs)} modules, train {sum(map(len, train))} chars, held-out {sum(map(len, held))} chars "
          f"({leaked} docstrings also in train dropped from held-out)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".cache/corpus")
