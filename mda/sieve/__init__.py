"""mda.sieve -- the Sieve mail filtering language (RFC 5228), parser and interpreter.

    script = parse(text, name)             # SieveSyntaxError with line and column
    result = run([script], Message(raw), EnvelopeInfo(sender, rcpt), env, limits)

The base language is in commands.py; each extension has its own ext_*.py module,
all registered here. CAPABILITIES lists what `require` accepts.
"""

from __future__ import annotations

from . import commands  # noqa: F401  (the base language registers itself)
from . import (ext_fileinto, ext_copy, ext_mailbox, ext_imap4flags, ext_reject,  # noqa: F401
               ext_envelope, ext_encoded, ext_relational, ext_subaddress, ext_regex,
               ext_variables, ext_vacation, ext_body, ext_include, ext_index, ext_date,
               ext_duplicate)
from .interpreter import (EnvelopeInfo, Environment, FileInto, Limits, Message, Redirect, Reject, Result,
                          SieveRuntimeError, Vacation, fallback_result, run)
from .lexer import SieveSyntaxError
from .parser import REGISTRY, Script, parse, parse_bytes

CAPABILITIES = tuple(sorted(REGISTRY.capabilities))

__all__ = [
    "CAPABILITIES", "EnvelopeInfo", "Environment", "FileInto", "Limits", "Message", "Redirect", "Reject",
    "Result", "Script", "SieveRuntimeError", "SieveSyntaxError", "Vacation", "fallback_result", "parse",
    "parse_bytes", "run",
]
