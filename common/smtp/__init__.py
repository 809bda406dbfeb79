"""common.smtp -- SMTP protocol cores without I/O: server (SMTP and LMTP) and the outbound client."""
