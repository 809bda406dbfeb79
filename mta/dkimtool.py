"""mta.dkimtool -- postroom-dkim: make DKIM key pairs and print the DNS record to publish.

    postroom-dkim keygen DOMAIN SELECTOR [--type rsa|ed25519] [--bits 2048] [--dir DIR]

writes DIR/DOMAIN.SELECTOR.key (PKCS#8 PEM, mode 0600) and prints the TXT record
for SELECTOR._domainkey.DOMAIN and the `queue.dkim` entry for mta.yaml.

SECURITY: the private key file is created exclusively with mode 0600; an existing
file is never overwritten.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from common.errors import EX_CANTCREAT, EX_OK, EX_USAGE
from common.fsutil import write_durably


def make_key(kind: str, bits: int = 2048) -> tuple[bytes, str]:
    """(private PEM, the p= value of the TXT record)."""
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, base64.b64encode(pub).decode()


def txt_record(kind: str, p: str) -> str:
    return f"v=DKIM1; k={'ed25519' if kind == 'ed25519' else 'rsa'}; p={p}"


def zone_strings(text: str) -> str:
    """text as zone-file character strings: at most 255 octets each (RFC 1035)."""
    return " ".join(f'"{text[i:i + 250]}"' for i in range(0, len(text), 250))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="postroom-dkim", description="DKIM key management for postroom-mta.")
    sub = ap.add_subparsers(dest="command", required=True)
    kg = sub.add_parser("keygen", help="write a key pair and print the DNS TXT record to publish")
    kg.add_argument("domain")
    kg.add_argument("selector")
    kg.add_argument("--type", choices=("rsa", "ed25519"), default="rsa", help="key type (default rsa)")
    kg.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    kg.add_argument("--dir", type=Path, default=Path("."), help="folder for the private key (default: .)")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return EX_USAGE if e.code else EX_OK
    if args.type == "rsa" and not 1024 <= args.bits <= 8192:
        print("postroom-dkim: --bits must be from 1024 to 8192", file=sys.stderr)
        return EX_USAGE
    domain = args.domain.lower().rstrip(".")
    pem, p = make_key(args.type, args.bits)
    name = f"{domain}.{args.selector}.key"
    path = args.dir / name
    if path.exists():
        print(f"postroom-dkim: {path} exists; not overwritten", file=sys.stderr)
        return EX_CANTCREAT
    try:
        args.dir.mkdir(parents=True, exist_ok=True)
        write_durably(args.dir, name, [pem], mode=0o600)
    except OSError as e:
        print(f"postroom-dkim: cannot write {path}: {e.strerror or e}", file=sys.stderr)
        return EX_CANTCREAT
    algorithm = "ed25519-sha256" if args.type == "ed25519" else "rsa-sha256"
    print(f"; private key: {path.resolve()}")
    print("; mta.yaml, under queue: dkim:")
    print(f";   - {{domain: {domain}, selector: {args.selector}, key: {path.resolve()}, algorithm: {algorithm}}}")
    print(f'{args.selector}._domainkey.{domain}. IN TXT {zone_strings(txt_record(args.type, p))}')
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
