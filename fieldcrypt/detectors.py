"""The named PII detectors of discovery (fieldcrypt.discovery): does a text value contain one?

Each detector searches inside a value (free-text notes hold an email among other words) and
answers yes or no; it never returns what it found, so nothing downstream can print a value.

- `email`: local@domain.tld, the usual address characters (RFC 5322's quoted forms are not
  looked for: they do not occur in data people type).
- `phone`: Google's libphonenumber (the `phonenumbers` package) finds numbers in text at its
  VALID leniency: E.164 (`+33 6 12 34 56 78`) in any country, national forms
  (`06 12 34 56 78`, `(415) 555-2671`) in the chosen regions. A regex cannot tell a phone
  number from an order id or a date; the library knows each country's numbering plan. Digits
  that belong to an IBAN, an email, a UUID, a date or time, a dotted quad or a card-shaped run are not
  searched, and a
  number needs at least MIN_PHONE_DIGITS digits.
- `card_number`: 13-19 digits (spaces or dashes between groups) with a known card-network
  prefix and length (Visa, Mastercard, Amex, Discover, JCB, Diners) and a valid Luhn check digit.
  The prefix rule keeps the 1 in 10 of random digit strings that pass Luhn out.
- `iban`: a country code with its registered IBAN length and the ISO 7064 mod-97 check.
- `ip_address`: IPv4 dotted quads and IPv6 addresses, validated by the standard `ipaddress` module.

Each detector also has a `prefilter`: an RE2 pattern (Arrow's regex engine) that every value it
can match contains, so a column's values are screened in Arrow and only candidates reach Python.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import phonenumbers

from fieldcrypt.errors import InputError

DEFAULT_PHONE_REGIONS = ("US", "GB", "FR", "DE")
# Short numbers (German subscriber numbers without area code, service numbers) are "valid" to the library
# and look like any order id: a number with fewer digits is not reported.
MIN_PHONE_DIGITS = 8


@dataclass(frozen=True)
class Detector:
    """One kind of PII: `matches(text)` says whether `text` contains one; `prefilter` screens values in Arrow."""

    name: str
    prefilter: str
    matches: Callable[[str], bool]


# -- email -------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    r"(?![A-Za-z0-9-])"
)


def is_email_in(text: str) -> bool:
    return _EMAIL.search(text) is not None


# -- phone -------------------------------------------------------------------------------


def phone_matcher(regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> Callable[[str], bool]:
    """Whether a text holds a valid phone number: international (with +) anywhere, national in `regions`."""
    unknown = [region for region in regions if region not in phonenumbers.SUPPORTED_REGIONS]
    if unknown:
        raise InputError(f"phone region {', '.join(unknown)} is not a region code libphonenumber knows (e.g. US, FR)")
    chosen = tuple(regions) or ("ZZ",)  # ZZ: unknown region, international forms only

    def matches(text: str) -> bool:
        text = _blanked(text, _not_phone_spans(text))
        return any(
            sum(char.isdigit() for char in found.raw_string) >= MIN_PHONE_DIGITS
            for region in chosen
            for found in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID)
        )

    return matches


# -- card numbers ------------------------------------------------------------------------

_CARD = re.compile(r"(?<![\w+-])\d(?:[ -]?\d){12,18}(?![\w-])")
# (prefixes, accepted lengths) per network
_CARD_NETWORKS: tuple[tuple[tuple[str, ...], tuple[int, ...]], ...] = (
    (("4",), (13, 16, 19)),  # Visa
    (tuple(str(p) for p in range(51, 56)) + tuple(str(p) for p in range(2221, 2721)), (16,)),  # Mastercard
    (("34", "37"), (15,)),  # American Express
    (("6011", "65", *(str(p) for p in range(644, 650))), (16, 17, 18, 19)),  # Discover
    (tuple(str(p) for p in range(3528, 3590)), (16, 17, 18, 19)),  # JCB
    (("36", "38", *(str(p) for p in range(300, 306))), (14, 15, 16, 17, 18, 19)),  # Diners Club
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _is_card_number(digits: str) -> bool:
    return any(
        len(digits) in lengths and digits.startswith(prefixes) for prefixes, lengths in _CARD_NETWORKS
    ) and luhn_valid(digits)


def is_card_number_in(text: str) -> bool:
    text = _blanked(text, _iban_spans(text))  # an IBAN's digits are not a card number
    return any(_is_card_number(re.sub(r"[ -]", "", match.group())) for match in _CARD.finditer(text))


# -- IBAN --------------------------------------------------------------------------------

# Registered IBAN lengths by country (the SWIFT IBAN registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")


def iban_valid(iban: str) -> bool:
    """A compact IBAN (no spaces): registered length for its country, and mod-97 == 1."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isascii() or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _iban_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for match in _IBAN.finditer(text):
        compact = match.group().replace(" ", "")
        # A match may run into the next word: the IBAN is its prefix of the registered length.
        length = IBAN_LENGTHS.get(compact[:2])
        if length is not None and len(compact) >= length and iban_valid(compact[:length]):
            spans.append(match.span())
    return spans


def is_iban_in(text: str) -> bool:
    return bool(_iban_spans(text))


# -- IP addresses ------------------------------------------------------------------------

_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")  # IP-shaped; ipaddress says if it is one
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?(?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})?")


def _ip_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for match in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            continue
        spans.append(match.span())
    if text.count(":") >= 2:
        for match in _IPV6.finditer(text):
            try:
                ipaddress.IPv6Address(match.group().split("%")[0])
            except ValueError:
                continue
            spans.append(match.span())
    return spans


def is_ip_address_in(text: str) -> bool:
    return bool(_ip_spans(text))


# -- what phone numbers are searched in ------------------------------------------------------


def _blanked(text: str, spans: list[tuple[int, int]]) -> str:
    for start, end in spans:
        text = text[:start] + " " * (end - start) + text[end:]
    return text


# ISO dates and times of day, with fractions and offsets: "07.513680" in "…:07.513680+00:00" is a "valid" German number
_DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
    r"|\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
)
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def _not_phone_spans(text: str) -> list[tuple[int, int]]:
    """Digits that belong to something else: an IBAN, an IP address, an email, a card-shaped number
    (whatever its Luhn digit: libphonenumber finds "valid" numbers inside long digit runs)."""
    return [
        *_iban_spans(text),
        *(m.span() for m in _IPV4.finditer(text)),  # a dotted quad, valid or not, is no phone number
        *_ip_spans(text),
        *(m.span() for m in _EMAIL.finditer(text)),
        *(m.span() for m in _CARD.finditer(text)),
        *(m.span() for m in _UUID.finditer(text)),
        *(m.span() for m in _DATE_TIME.finditer(text)),
    ]


def detectors(phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> tuple[Detector, ...]:
    """The detectors discovery runs, in report order (national phone forms of `phone_regions`)."""
    return (
        Detector("email", r"@[A-Za-z0-9-]+\.", is_email_in),
        Detector("phone", r"\d(?:[^\d]{0,3}\d){7}", phone_matcher(phone_regions)),
        Detector("card_number", r"\d(?:[ -]?\d){12}", is_card_number_in),
        Detector("iban", r"[A-Za-z]{2}\d{2} ?[A-Za-z0-9]{4}", is_iban_in),
        Detector("ip_address", r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|:[0-9A-Fa-f]{0,4}:", is_ip_address_in),
    )
