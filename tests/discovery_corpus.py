"""A generated, labelled corpus for the PII detectors (fieldcrypt.detectors), and planted values for test lakes.

Positives are built from each kind's own rules (card numbers with a network prefix and a Luhn
check digit, IBANs with their country's length and mod-97 check digits, phone numbers from
numbering plans known to be valid, ...), bare or inside a sentence. Negatives are what
sits in text columns and looks close: UUIDs, timestamps as text, numbers that fail Luhn,
order ids, versions, hashes, MAC addresses, malformed emails and addresses, prose.
"""

from __future__ import annotations

import ipaddress
import random
import string
import uuid
from datetime import UTC, datetime, timedelta

from fieldcrypt.detectors import luhn_valid

_WORDS = tuple(
    "order shipped customer asked about refund delivery late please call back tomorrow invoice paid "  # noqa: SIM905
    "account closed ticket escalated warehouse parcel damaged replacement sent thanks regards team".split()
)
_DOMAINS = ("example.com", "mail.example.org", "corp.example.co.uk", "post.example.fr", "web.de")
_US_AREA_CODES = ("212", "415", "312", "617", "206", "303", "404", "512", "702", "305")


def sentence(rng: random.Random, words: int = 6) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def embed(rng: random.Random, value: str) -> str:
    """The value bare, or inside a sentence (free-text notes)."""
    if rng.random() < 0.5:
        return value
    return f"{sentence(rng, 3)} {value} {sentence(rng, 2)}"


def email(rng: random.Random) -> str:
    local = rng.choice(
        (
            f"{rng.choice(_WORDS)}.{rng.choice(_WORDS)}",
            f"{rng.choice(_WORDS)}{rng.randrange(1000)}",
            f"{rng.choice(_WORDS)}+{rng.choice(_WORDS)}",
            f"{rng.choice(string.ascii_lowercase)}_{rng.choice(_WORDS)}",
        )
    )
    return f"{local}@{rng.choice(_DOMAINS)}"


def phone(rng: random.Random) -> str:
    """E.164 or a national form of US, FR, GB or DE numbers in ranges their numbering plans assign."""
    kind = rng.randrange(8)
    digits = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    # metropolitan mobiles (06 9x is Reunion's, 07 0x-2x is unassigned)
    fr = rng.choice((f"6{rng.choice('012345678')}{digits(7)}", f"7{rng.choice('3456789')}{digits(7)}"))
    us = f"{rng.choice(_US_AREA_CODES)}{rng.choice('23456789')}{rng.choice('23456789')}{digits(1)}{digits(4)}"
    gb = f"7{rng.choice('45789')}{digits(8)}"
    de = f"15{rng.choice('127')}{digits(8)}"
    if kind == 0:
        return f"+33 {fr[0]} {fr[1:3]} {fr[3:5]} {fr[5:7]} {fr[7:]}"
    if kind == 1:
        return f"0{fr[0]} {fr[1:3]} {fr[3:5]} {fr[5:7]} {fr[7:]}"
    if kind == 2:
        return f"+1{us}"
    if kind == 3:
        return f"({us[:3]}) {us[3:6]}-{us[6:]}"
    if kind == 4:
        return f"+44 {gb[:4]} {gb[4:]}"
    if kind == 5:
        return f"0{gb[:4]} {gb[4:]}"
    if kind == 6:
        return f"+49 {de[:3]} {de[3:]}"
    return f"0{de[:3]} {de[3:]}"


_NETWORKS = (("4", 16), ("4", 13), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16))


def luhn_complete(body: str) -> str:
    """`body` + the check digit that makes it pass Luhn."""
    return next(body + d for d in string.digits if luhn_valid(body + d))


def card_number(rng: random.Random, *, valid: bool = True) -> str:
    prefix, length = rng.choice(_NETWORKS)
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    number = luhn_complete(body)
    if not valid:
        number = number[:-1] + str((int(number[-1]) + rng.randrange(1, 10)) % 10)
    style = rng.randrange(3)
    if style == 0:
        return number
    separator = " " if style == 1 else "-"
    return separator.join(number[i : i + 4] for i in range(0, len(number), 4))


_IBAN_COUNTRIES = {"DE": 22, "FR": 27, "GB": 22, "NL": 18, "ES": 24, "IT": 27, "BE": 16, "CH": 21}


def iban(rng: random.Random) -> str:
    country = rng.choice(sorted(_IBAN_COUNTRIES))
    length = _IBAN_COUNTRIES[country]
    letters = 4 if country in ("GB", "NL") else 0
    bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(letters))
    bban += "".join(rng.choice(string.digits) for _ in range(length - 4 - letters))
    numeric = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    compact = f"{country}{98 - numeric % 97:02d}{bban}"
    if rng.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def ip_address(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return str(ipaddress.IPv4Address(rng.getrandbits(32)))
    bits = rng.getrandbits(128) if rng.random() < 0.5 else (0x2001_0DB8 << 96) | rng.getrandbits(16)  # compressible
    address = ipaddress.IPv6Address(bits)
    return address.exploded if rng.random() < 0.3 else address.compressed


POSITIVES = {"email": email, "phone": phone, "card_number": card_number, "iban": iban, "ip_address": ip_address}


def negative(rng: random.Random) -> str:
    """Text that looks close to PII and is not."""
    digits = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    fraction = rng.choice((0, rng.randrange(10**6)))  # isoformat() then shows microseconds
    moment = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(10**8), microseconds=fraction)
    kind = rng.randrange(16)
    choices = {
        0: lambda: str(uuid.UUID(int=rng.getrandbits(128))),
        1: moment.isoformat,
        2: lambda: moment.strftime("%Y-%m-%d %H:%M:%S"),
        3: lambda: moment.strftime("%Y-%m-%d"),
        4: lambda: card_number(rng, valid=False),  # fails Luhn
        5: lambda: f"ORD-{digits(6)}",
        6: lambda: f"v{rng.randrange(10)}.{rng.randrange(20)}.{rng.randrange(50)}",
        7: lambda: f"{rng.randrange(1, 999)}.{rng.randrange(100):02d} EUR",
        8: lambda: f"{rng.getrandbits(160):040x}",  # a SHA-1 hex digest
        9: lambda: ":".join(f"{rng.randrange(256):02x}" for _ in range(6)),  # a MAC address
        10: lambda: f"{rng.choice(_WORDS)}@{rng.choice(_WORDS)}",  # no domain
        11: lambda: f"{rng.randrange(256, 999)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
        12: lambda: sentence(rng, rng.randrange(3, 12)),
        13: lambda: f"https://{rng.choice(_DOMAINS)}/{rng.choice(_WORDS)}?id={digits(5)}",
        14: lambda: "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randrange(8, 32))),
        15: lambda: moment.strftime("%H:%M:%S"),
    }
    return choices[kind]()


def corpus(seed: int = 21, per_kind: int = 600, negatives: int = 4_000) -> list[tuple[str, str | None]]:
    """(text, the detector that should match it, or None), shuffled."""
    rng = random.Random(seed)
    items: list[tuple[str, str | None]] = [
        (embed(rng, make(rng)), kind) for kind, make in POSITIVES.items() for _ in range(per_kind)
    ]
    items += [(negative(rng), None) for _ in range(negatives)]
    rng.shuffle(items)
    return items
