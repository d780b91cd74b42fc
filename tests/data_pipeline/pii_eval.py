"""A labelled set for the phone-number rule, and its precision and recall.

Positives: libphonenumber's example numbers (the ``phonenumbers`` package, a fixed-line and a mobile number
for every region it knows) in international and national format, 9–15 digits (the rule's scope), each in
a sentence. Negatives: real text with many digits that nobody here wrote — every line with a digit run of
the IANA registry pages in pywb's test WARC (number ranges, RFC numbers, "Archived by year: 2004 2005 …")
and every sentence with a digit run in the 10,033 Wikipedia intros of the default corpus (years, dates,
populations) — plus dates, ISBNs, year lists and numbers in prose written out below.

    python -m tests.data_pipeline.pii_eval     # prints the table that docs/data.md quotes
"""

from __future__ import annotations

import gzip
import re
from functools import cache

from mai.counts import Score
from mai.data.pipeline.document import Document
from mai.data.pipeline.registry import build_steps

DIGIT_RUN = re.compile(r"\d[\d\s,().\-/]{4,}\d")
WRITTEN_NEGATIVES = [
    "In 1914 1918 1939 the borders moved again.", "Archived by year: 2004 2005 2006 2007 2008",
    "The book (ISBN 978-0-306-40615-7) came out in 2003.", "Its ISBN is 0-306-40615-2.",
    "ISBN-10: 0306406152 and ISBN-13: 9780306406157.", "It opened on 2024-01-15 and closed on 15.01.2025.",
    "Dates such as 01/15/2024 12:30 and 2023/12/31 are common.", "Values 16384-32767 are reserved.",
    "The range 0-16777215 is assigned.", "RFC 2858 1-16383: Standards Action.",
    "The city had 1 234 567 890 visitors.", "The budget was $1,234,567,890 in 2019.",
    "Population: 8 336 817 (2019 census).", "Scores were 3-1, 2-2 and 10-12.",
    "See pages 123-145 and 201-230 of volume 12.", "Version 10.0.19041.1 fixed the bug.",
    "Section 3.1.4.2 describes it.", "The coordinates are 40.7128 -74.0060.",
    "Between 1939 and 1945, 1946 and 1950, the numbers were 123456 and 789012.",
    "Flight 1234 5678 was cancelled.", "Order number 2024 0001 2345 ships today.",
]


def phone_examples() -> list[tuple[str, str]]:
    """(format, number) for libphonenumber's example numbers with 9-15 digits."""
    import phonenumbers as pn
    from phonenumbers import PhoneNumberFormat, PhoneNumberType

    out = []
    for region in sorted(pn.SUPPORTED_REGIONS):
        for kind in (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE):
            number = pn.example_number_for_type(region, kind)
            for name, fmt in (("international", PhoneNumberFormat.INTERNATIONAL),
                              ("national", PhoneNumberFormat.NATIONAL)):
                text = pn.format_number(number, fmt) if number else ""
                if 9 <= sum(c.isdigit() for c in text) <= 15:
                    out.append((name, text))
    return sorted(set(out))


def iana_lines() -> list[str]:
    """Lines with a long digit run from the IANA pages of pywb's test WARC (real registry text)."""
    from warcio.archiveiterator import ArchiveIterator

    from mai.data.pipeline.extract import ExtractConfig, decode_html, html_to_text
    from tests.data_pipeline.sdists import PYWB, member

    lines = []
    import io

    data = gzip.decompress(member(PYWB, "sample_archive/warcs/iana.warc.gz"))
    for record in ArchiveIterator(io.BytesIO(data)):
        ctype = record.http_headers.get_header("Content-Type") if record.http_headers else ""
        if record.rec_type == "response" and "html" in (ctype or ""):
            text = html_to_text(decode_html(record.content_stream().read(), ctype)[0], ExtractConfig()) or ""
            lines += [ln for ln in text.split("\n") if DIGIT_RUN.search(ln)]
    return list(dict.fromkeys(lines))


def wiki_sentences() -> list[str]:
    from mai.data.corpus import default_corpus

    return [s for t in default_corpus() for s in re.split(r"(?<=[.!?])\s+", t) if DIGIT_RUN.search(s)]


@cache
def labelled_set() -> dict[str, list[tuple[str, str]]]:
    """Group → (text, the text with every phone number replaced by <phone>)."""
    template = "For bookings call {} during office hours."
    groups: dict[str, list[tuple[str, str]]] = {"international": [], "national": []}
    for name, number in phone_examples():
        groups[name].append((template.format(number), template.format("<phone>")))
    groups["written negatives"] = [(t, t) for t in WRITTEN_NEGATIVES]
    groups["IANA pages (real)"] = [(t, t) for t in iana_lines()]
    groups["Wikipedia sentences (real)"] = [(t, t) for t in wiki_sentences()]
    return groups


def evaluate() -> dict[str, Score]:
    step = build_steps([{"type": "pii", "email": False, "ip": False}])[0]
    scores: dict[str, Score] = {}
    for group, cases in labelled_set().items():
        score = scores.setdefault(group, Score())
        for text, expected in cases:
            doc = Document("x", text, {})
            step(doc)
            found = doc.metadata.get("pii", {}).get("phone", 0)
            wanted = expected.count("<phone>")
            exact = doc.text == expected
            score.tp += wanted if exact else 0
            score.fn += 0 if exact else wanted
            score.fp += found if not exact or not wanted else 0
    return scores


def total(scores: dict[str, Score]) -> Score:
    return Score(sum(s.tp for s in scores.values()), sum(s.fp for s in scores.values()),
                 sum(s.fn for s in scores.values()))


if __name__ == "__main__":
    result = evaluate()
    sizes = {g: len(c) for g, c in labelled_set().items()}
    for group, s in [*result.items(), ("all", total(result))]:
        rates = f"precision {s.precision:.3f} recall {s.recall:.3f}" if s.tp + s.fn else ""
        print(f"{group:<28} {sizes.get(group, sum(sizes.values())):>5} cases  tp {s.tp:>4} fp {s.fp:>3} "
              f"fn {s.fn:>4}  {rates}")
