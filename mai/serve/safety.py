"""Content safety for prompts and completions: categories hate, sexual, violence and self-harm with
severities 0–7 reported as safe / low / medium / high (Azure OpenAI's scale), blocking at a configured level.

Two signals combine: category rules (phrase patterns, each with a severity) and, when the
``alt-profanity-check`` package is installed, its trained linear classifier, whose probability of abusive
language raises the severity of hate by up to 3 levels when a rule also fired and gives "low" alone.
The rules are deliberately small and listed here so that operators can read and extend them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CATEGORIES = ("hate", "sexual", "violence", "self_harm")
LEVELS = {"safe": 0, "low": 2, "medium": 4, "high": 6}

# (severity, pattern) per category; patterns match whole words, case-insensitively.
_RULES: dict[str, list[tuple[int, str]]] = {
    "hate": [
        (6, r"(exterminate|wipe out|gas) (all )?(the )?(jews|muslims|christians|blacks|gays|immigrants)"),
        (5, r"(jews|muslims|christians|blacks|whites|gays|women|immigrants|refugees) (are|r) (all )?"
            r"(vermin|animals|subhuman|parasites|inferior|a disease)"),
        (4, r"(go back to your country|racial purity|master race|white power|subhuman)"),
        (2, r"(i hate (all )?(jews|muslims|christians|blacks|whites|gays|women|men|immigrants))"),
    ],
    "sexual": [
        (7, r"(child|minor|underage|kid)s? (porn|sex|nude|naked)|sex with (a )?(child|minor|kid)"),
        (5, r"(explicit sex|hardcore porn|porn(ography)?|blow ?job|orgasm|masturbat\w*|genitals)"),
        (3, r"(have sex|sexual intercourse|naked|nude|erotic|horny)"),
    ],
    "violence": [
        (6, r"(how (do i|to|can i) (make|build) (a )?(bomb|explosive|pipe bomb)|mass shooting|"
            r"(shoot|stab|kill|murder) (them|him|her|everyone|people|my \w+))"),
        (4, r"(i will|i'm going to|i am going to|gonna) (kill|hurt|beat|shoot|stab)|behead\w*|torture \w+"),
        (2, r"(kill|murder|stab|shoot|assault|massacre|bloodbath)\w*"),
    ],
    "self_harm": [
        (6, r"(how (do i|to|can i) (kill myself|commit suicide|end my life)|best way to (die|kill myself))"),
        (5, r"(i want to (die|kill myself|end it all)|i('m| am) going to kill myself|cut(ting)? myself)"),
        (3, r"(suicid\w*|self[- ]harm\w*|hurt(ing)? myself)"),
    ],
}
_COMPILED = {c: [(s, re.compile(rf"\b(?:{p})\b", re.IGNORECASE)) for s, p in rules]
             for c, rules in _RULES.items()}


def level_name(severity: int) -> str:
    return "high" if severity >= 6 else "medium" if severity >= 4 else "low" if severity >= 2 else "safe"


@dataclass
class SafetyResult:
    severity: dict[str, int]
    blocked: list[str]  # categories at or above the blocking level

    @property
    def flagged(self) -> bool:
        return bool(self.blocked)

    def annotations(self) -> dict[str, dict[str, object]]:
        """Azure-style per-category annotation: ``{"hate": {"filtered": False, "severity": "safe"}}``."""
        return {c: {"filtered": c in self.blocked, "severity": level_name(s)}
                for c, s in self.severity.items()}

    def scores(self) -> dict[str, float]:
        return {c: round(s / 7, 4) for c, s in self.severity.items()}


class SafetyFilter:
    """Scores text per category; ``check(text, block_at)`` marks categories at or above ``block_at``."""

    def __init__(self, use_classifier: bool = True):
        self._predict = None
        if use_classifier:
            try:
                from profanity_check import predict_prob
            except ImportError:  # the classifier is optional: the rules still work
                predict_prob = None
            self._predict = predict_prob

    def score(self, text: str) -> dict[str, int]:
        sev = {c: max((s for s, rx in rules if rx.search(text)), default=0) for c, rules in _COMPILED.items()}
        if self._predict is not None and text.strip():
            p = float(self._predict([text[:4000]])[0])
            if p > 0.5:  # abusive language: raises a hate finding, alone it is "low"
                sev["hate"] = min(7, sev["hate"] + round(6 * (p - 0.5))) if sev["hate"] else 2
        return sev

    def check(self, text: str, block_at: str) -> SafetyResult:
        sev = self.score(text)
        limit = LEVELS.get(block_at)
        blocked = [] if block_at == "off" or limit is None else [c for c, s in sev.items() if s >= limit]
        return SafetyResult(sev, blocked)
