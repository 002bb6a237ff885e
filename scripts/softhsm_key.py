#!/usr/bin/env python3
"""Create (or delete) fieldcrypt's master key in a PKCS#11 token: an AES-256 secret key object.

    # once: a token (SoftHSM2 shown; an HSM has its own tooling)
    softhsm2-util --init-token --free --label fieldcrypt --so-pin "$SO_PIN" --pin "$FIELDCRYPT_HSM_PIN"
    # the key, by label; the PIN is read from the variable named by --pin-env (never an argument)
    python scripts/softhsm_key.py --module /usr/lib/softhsm/libsofthsm2.so --token fieldcrypt \
        --label fieldcrypt-master-1 --pin-env FIELDCRYPT_HSM_PIN
    # revocation drill: delete the key object (every wrapped data key under it becomes unreadable)
    python scripts/softhsm_key.py ... --label fieldcrypt-master-1 --delete --yes

The key is generated inside the token, token-resident (CKA_TOKEN), private, sensitive,
never extractable, and allowed to encrypt and decrypt only (no wrap, sign or derive):
what `fieldcrypt.keys.providers.pkcs11` requires. A label already in use is refused.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", required=True, help="PKCS#11 module (.so)")
    parser.add_argument("--token", required=True, help="token label")
    parser.add_argument("--label", required=True, help="key label")
    parser.add_argument("--pin-env", default="FIELDCRYPT_HSM_PIN", help="variable holding the user PIN")
    parser.add_argument("--delete", action="store_true", help="delete the key object instead (irreversible)")
    parser.add_argument("--yes", action="store_true", help="confirm --delete")
    args = parser.parse_args(argv)

    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    pin = os.environ.get(args.pin_env)
    if not pin:
        print(f"error: PIN variable {args.pin_env} is not set", file=sys.stderr)
        return 2
    token = pkcs11.lib(args.module).get_token(token_label=args.token)
    with token.open(user_pin=pin, rw=True) as session:
        existing = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: args.label}))
        if args.delete:
            if not args.yes:
                print("error: --delete destroys the master key; add --yes", file=sys.stderr)
                return 2
            for key in existing:
                key.destroy()
            print(f"deleted {len(existing)} key object(s) labelled {args.label!r} on token {args.token!r}")
            return 0
        if existing:
            print(f"error: token {args.token!r} already has a secret key labelled {args.label!r}", file=sys.stderr)
            return 1
        session.generate_key(
            KeyType.AES,
            256,
            label=args.label,
            store=True,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
                Attribute.SIGN: False,
                Attribute.VERIFY: False,
                Attribute.DERIVE: False,
            },
        )
    print(f"created AES-256 key {args.label!r} on token {args.token!r} (sensitive, not extractable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
