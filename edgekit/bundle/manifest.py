"""The bundle manifest, under the name the builder and ``inspect`` have imported it by.

The record (typed :class:`Manifest` view, schema, reading, writing, the folder naming
rule) lives in :mod:`edgekit.results.manifest`, on the records floor, so the bench and
the bundle check before a push read manifests with the same code; this module only
re-exports it.
"""

from __future__ import annotations

from edgekit.results.manifest import (  # noqa: F401
    MANIFEST_FILE,
    MANIFEST_KIND,
    MANIFEST_SCHEMA,
    REQUIRED_KEYS,
    Manifest,
    bundle_name,
    from_report,
    make_manifest,
    manifest_for_bundle,
    parse_bundle_name,
    read_beside,
    read_manifest,
    update_manifest,
    validate,
    write_manifest,
)
