"""mta -- see docs/architecture.md."""
