"""common.smtp -- SMTP protocol cores without I/O, shared by the MTA and the MDA.

`server.SmtpServerConn` is the SMTP/LMTP server state machine; `replies` formats
replies with enhanced status codes.
"""
