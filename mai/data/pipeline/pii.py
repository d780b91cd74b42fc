"""PII redaction: e-mail addresses, public IP addresses and phone numbers become placeholders.

Private, loopback and reserved IPs (10.x, 192.168.x, 127.x …) are kept: they identify no one. Counts of
each replacement go into ``metadata["pii"]``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from mai.data.pipeline.document import Document
from mai.data.pipeline.step import Step

EMAIL_RE = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
IPV4_RE = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
# +1 (555) 123-4567, 555-123-4567, +44 20 7946 0958, 0049 30 1234567: 9-15 digits with separators.
PHONE_RE = re.compile(r"(?<![\w+])(?<!\d\.)(?:\+|00)?\d{1,3}?[\s.-]?(?:\(\d{2,4}\)|\d{2,4})"
                      r"[\s.-]\d{3,4}[\s.-]?\d{3,4}(?!\w|\.\d)")


@dataclasses.dataclass
class PiiConfig:
    email: bool = True
    ip: bool = True
    phone: bool = True
    email_placeholder: str = "<email>"
    ip_placeholder: str = "<ip>"
    phone_placeholder: str = "<phone>"


def _public_ip(match: re.Match[str]) -> bool:
    try:
        return ipaddress.ip_address(match.group(0)).is_global
    except ValueError:  # 999.1.1.1 is not an address
        return False


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
            sub("phone", PHONE_RE, c.phone_placeholder,
                lambda m: 9 <= sum(ch.isdigit() for ch in m.group(0)) <= 15)
        if counts:
            doc.text = text
            doc.metadata["pii"] = counts
        return None
