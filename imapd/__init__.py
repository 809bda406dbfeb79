"""imapd -- see docs/architecture.md."""
