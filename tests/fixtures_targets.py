"""Fixtures (session-scoped where expensive)."""
