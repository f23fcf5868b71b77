"""Shared pytest set-up. Fixtures live in plugin modules, one per area."""

pytest_plugins = ["fixtures_bundles", "fixtures_targets", "fixtures_results"]
