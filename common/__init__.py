"""common -- the library every postroom daemon stands on.

Configuration, users and passwords, TLS, logging, the daemon runner, durable file
writes, the spool format, and maildir storage. It imports no daemon package.
"""
