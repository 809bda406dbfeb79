"""mda -- see docs/architecture.md."""
