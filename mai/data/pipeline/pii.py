"""PII redaction: e-mail addresses, public IP addresses and phone numbers become placeholders.

Private, loopback and reserved IPs (10.x, 192.168.x, 127.x …) are kept: they identify no one, and so are
dotted numbers after "version", "section" and the like. Counts of each replacement go into
``metadata["pii"]``.

Phone numbers: a run of 9–15 digits with single separators is a candidate; it is a phone number only
when it has a phone's shape — an international prefix (``+``, ``00``), an area code in parentheses, a
national trunk ``0`` before a group of two or more digits, the North American 3-3-4 layout, or three or
more two-digit groups — and is not a date, a list of years, an ISBN or a range of numbers. Digit runs in
prose (years, registry ranges, populations, ISBNs) have none of those shapes; the rule's precision and
recall on a labelled set (real text plus libphonenumber's example numbers) are in docs/data.md.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from mai.data.pipeline.document import Document
from mai.data.pipeline.step import Step

EMAIL_RE = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
IPV4_RE = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
_NOT_AN_ADDRESS = re.compile(r"(?<!\w)(?:version|release|ver|v|section|sec|§|chapter|clause|rule|step|figure"
                             r"|table)[\s.]*$", re.I)
# digits, parentheses and . - / separators, single spaces only between digits: 555-123-4567, +44 20 7946 0958
PHONE_CANDIDATE = re.compile(r"(?<![\w+.\-/(])(?:\+|\(\+?)?\d(?:[\d().\-/]|(?<=[\d)]) (?=[\d(]))*\d"
                             r"(?![\w\-/]|[.,]\d)")
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")
_NANP = re.compile(r"(?:1([ .-]))?\(?\d{3}\)?([ .-])\d{3}\2\d{4}")
_ISBN_BEFORE = re.compile(r"ISBN(?:-1[03])?[\s:]*$", re.I)


@dataclasses.dataclass
class PiiConfig:
    email: bool = True
    ip: bool = True
    phone: bool = True
    email_placeholder: str = "<email>"
    ip_placeholder: str = "<ip>"
    phone_placeholder: str = "<phone>"


def _public_ip(match: re.Match[str]) -> bool:
    if _NOT_AN_ADDRESS.search(match.string, max(0, match.start() - 12), match.start()):
        return False
    try:
        return ipaddress.ip_address(match.group(0)).is_global
    except ValueError:  # 999.1.1.1 is not an address
        return False


def _isbn(digits: str, groups: list[str]) -> bool:
    """ISBN-13 (978/979) or a hyphenated ISBN-10 whose check digit is right."""
    if len(digits) == 13:
        return digits[:3] in ("978", "979")
    if len(digits) == 10 and len(groups) == 4:
        return sum((10 - i) * int(d) for i, d in enumerate(digits)) % 11 == 0
    return False


def is_phone(match: re.Match[str]) -> bool:
    """Whether a candidate digit run has a phone number's shape (see the module docstring)."""
    text = match.group(0)
    groups = re.findall(r"\d+", text)
    digits = "".join(groups)
    if not 9 <= len(digits) <= 15 or len(groups) < 2 or _DATE.search(text):
        return False
    if _ISBN_BEFORE.search(match.string, max(0, match.start() - 12), match.start()) or _isbn(digits, groups):
        return False
    if all(len(g) == 4 and 1000 <= int(g) <= 2099 for g in groups):  # "in 1914 1918 1939"
        return False
    if text.startswith("+") or text.startswith("(+") or (text.startswith("00") and len(groups[0]) <= 5):
        return True
    if "(" in text:
        return bool(re.match(r"\(\d{2,5}\)", text)) or "(0)" in text
    if groups[0].startswith("0") and len(groups[0]) >= 2:
        return all(len(g) >= 2 for g in groups)  # "0-16777215" is a range
    return bool(_NANP.fullmatch(text)) or sum(len(g) == 2 for g in groups) >= 3


class PiiRedactor(Step):
    Config = PiiConfig
    kind = "pii"

    def __call__(self, doc: Document) -> str | None:
        c: PiiConfig = self.cfg
        counts: dict[str, int] = {}
        text = doc.text

        def sub(kind: str, pattern: re.Pattern[str], placeholder: str, keep=lambda m: True) -> None:
            nonlocal text

            def repl(m: re.Match[str]) -> str:
                if not keep(m):
                    return m.group(0)
                counts[kind] = counts.get(kind, 0) + 1
                return placeholder

            text = pattern.sub(repl, text)

        if c.email and "@" in text:
            sub("email", EMAIL_RE, c.email_placeholder)
        if c.ip:
            sub("ip", IPV4_RE, c.ip_placeholder, _public_ip)
        if c.phone:
            sub("phone", PHONE_CANDIDATE, c.phone_placeholder, is_phone)
        if counts:
            doc.text = text
            doc.metadata["pii"] = counts
        return None
