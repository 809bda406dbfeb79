"""imapd -- postroom's IMAP4rev1 server (postroom-imapd).

parser (grammar, framing limits), protocol (connection state machine), session
(selected mailbox view), commands/ (one module per command group), fetch and mime
(FETCH items, MIME tree), search, server (Twisted glue), main (entry point).
"""
