"""Command-line tools shipped with common: postroom-config, postroom-passwd, postroom-dev."""
