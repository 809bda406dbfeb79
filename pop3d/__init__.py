"""pop3d -- see docs/architecture.md."""
