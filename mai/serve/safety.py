"""Content safety for prompts and completions: categories hate, sexual, violence and self-harm with
severities 0–7 reported as safe / low / medium / high (Azure OpenAI's scale), blocking at a configured level.

Up to four signals combine, each category taking the highest severity any of them gives: category rules
(phrase patterns, each with a severity); when the ``alt-profanity-check`` package is installed, its trained
linear classifier of abusive language, which raises a hate finding by up to 3 levels and alone gives hate
"low" — but only when no other category's rule explains the text (it scores "I want to kill myself" as
abusive, and that is self-harm, not hate); the served model's own hidden-state classifier, which MAI trains
(``mai.serve.safety_classifier``) and which catches the paraphrase rules miss; and, when configured, a
model-based judge (``mai.serve.judge``). The rules are deliberately small and listed here so that
operators can read and extend them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mai.serve.judge import Judge

if TYPE_CHECKING:
    from mai.serve.safety_classifier import BoundClassifier

CATEGORIES = ("hate", "sexual", "violence", "self_harm")
LEVELS = {"safe": 0, "low": 2, "medium": 4, "high": 6}

# (severity, pattern) per category; patterns match whole words, case-insensitively. A pattern stays within
# one sentence ([^.!?\n] gaps) so that long completions do not pair words from far apart.
_GROUP = (r"(jews|muslims|christians|catholics|hindus|blacks|black people|whites|gays|gay people|lesbians|"
          r"homosexuals|transgender people|trans people|women|feminists|immigrants|refugees|foreigners|"
          r"mexicans|arabs|asians|chinese( people)?|indians|roma|gypsies|disabled people)")
_SLUR = (r"(vermin|animals|subhuman|parasites|inferior( \w+)?|a disease|diseased|a cancer|a plague|apes|rats|"
         r"greedy rats|cockroaches|savages|criminals|rapists|terrorists|thieves|perverts|freaks|"
         r"pedophiles|the devil|filthy|disgusting|not human|property|mentally ill( freaks)?|sneaky|"
         r"an abomination|an infestation)")
_NOT_SELF = r"(?! (myself|yourself|ourselves))"  # "kill myself" is self-harm, not violence
_HARM = r"(kill|murder|stab|shoot|strangle|drown|poison|behead|kidnap|torture|beat|hurt|attack|burn|hit)"
_VICTIM = (r"(them|him|her|everyone|people|someone|somebody|a person|a child|my \w+|a crowd|"
           r"a \w+ man|a \w+ woman|protesters|passengers|prisoners?|the villagers|you)")
_RULES: dict[str, list[tuple[int, str]]] = {
    "hate": [
        (6, rf"(exterminate|wipe out|gas|cleanse) (all )?(the )?{_GROUP}|{_GROUP} should all be wiped out|"
            r"cleanse the country"),
        (5, rf"{_GROUP} (are|r) (all |genetically )?(less intelligent|{_SLUR})"),
        (4, rf"(go back to your country|your kind|racial purity|master race|white power|subhuman|mongrels|"
            rf"our race is superior|no {_GROUP}|{_GROUP} (should|must|need to|deserve to)[^.!?\n]{{0,40}}"
            r"(banned|expelled|silenced|deported|fixed|suffer|die|not be allowed|never be allowed|obey))"),
        (2, rf"i hate (all )?({_GROUP}|men)"),
    ],
    "sexual": [
        (7, r"(child|minor|underage|kid|teenager)s? (porn|sex|nude|naked)|sex with (a )?(child|minor|kid)|"
            r"(sex|sexual)[^.!?\n]{0,30}(involving|with) a (minor|child|kid)|"
            r"naked (teenager|child|minor)[^.!?\n]{0,20}sexual|underage nude"),
        (5, r"explicit sex|hardcore|porn\w*|blow ?job|orgasm|masturbat\w*|sexting|orgy|threesome|"
            r"oral sex|bdsm|hentai|phone sex|sex (scene|show|positions)|"
            r"(explicit|graphic|dirty|steamy|erotic)[^.!?\n]{0,60}(sex\w*|roleplay|story|scene|poem|limerick)|"
            r"(sex\w*|roleplay)[^.!?\n]{0,60}(explicit|graphic)"),
        (3, r"have sex|having sex|has sex|sexual intercourse|naked|nude|erotic|horny|genitals|strip tease|"
            r"lap dance|undress\w*|seduc\w*"),
    ],
    "violence": [
        (6, r"(how (do i|to|can i) |instructions to |guide to )(make|build|making|building) (a |an )?"
            r"(\w+ )?(bomb|explosive|napalm|nerve gas|ricin|poison gas)|mass shooting|"
            rf"{_HARM}{_NOT_SELF} {_VICTIM}|car bomb|(make|making) (napalm|nerve gas|ricin)|"
            r"set (people|him|her|them) on fire|derail a train|run over protesters|hitman|"
            r"(massacre|attack|burn)[^.!?\n]{0,30}(synagogue|mosque|church|school|concert|crowd)"),
        (4, rf"(i will|i'll|i'm going to|i am going to|gonna|i want to|let's) {_HARM}{_NOT_SELF}|behead\w*|"
            r"torture \w+|to death|slit \w+ throat|set fire to|with (her|him|everyone) inside|"
            r"break someone's \w+|knock (them|him|her|someone) out|bloodbath|dismember\w*"),
        (2, rf"(murder|stab|assault|massacre|strangle)\w*{_NOT_SELF}"),
    ],
    "self_harm": [
        (6, r"how (do i|to|can i|should i) (kill|hang|suffocate|drown|poison|hurt|cut|overdose)[^.!?\n]{0,20}"
            r"myself|(commit|method to commit) suicide|end my life|(best|easiest|painless|quickest) way to "
            r"(die|end|stop breathing)|tie a noose|lethal dose[^.!?\n]{0,30}so i can|overdose on my|"
            r"cut my wrists|(drink|take|eat) to die|encourage me to go through with"),
        (5, r"i want to (die|kill myself|end it all|disappear forever|jump|stop eating)|"
            r"(i('m| am) going to|i will|i'll|i should( just)?|before i) "
            r"(kill myself|end my life|take all my pills|jump|drive my car off|use it on myself)|kill myself|"
            r"(cut|cutting|burn|starve|hit|punch|scratch|"
            r"hurt|hurting|harm|harming|punish|throw up|make myself throw up)[^.!?\n]{0,20}(myself|my body)|"
            r"suicide note|ready to die|can't go on living|bleed out|self-harm wounds|"
            r"(i('m| am) thinking about|only way out|seems like the only way)[^.!?\n]{0,20}suicide|"
            r"suicide seems|(until|before) i die|deserve pain|ways to hurt myself|punch walls"),
        (3, r"suicid\w*|self[- ]harm\w*|hurt(ing)? myself"),
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

    @staticmethod
    def rule_scores(text: str) -> dict[str, int]:
        return {c: max((s for s, rx in rules if rx.search(text)), default=0)
                for c, rules in _COMPILED.items()}

    def score(self, text: str) -> dict[str, int]:
        sev = self.rule_scores(text)
        if self._predict is not None and text.strip():
            p = float(self._predict([text[:4000]])[0])
            others = any(v for c, v in sev.items() if c != "hate")
            if p > 0.5 and sev["hate"]:  # abusive language raises a hate finding
                sev["hate"] = min(7, sev["hate"] + round(6 * (p - 0.5)))
            elif p > 0.5 and not others:  # abusive and nothing else explains it: "low" hate
                sev["hate"] = 2
        return sev

    def check(self, text: str, block_at: str, judge: Judge | None = None, role: str = "User",
              classifier: BoundClassifier | None = None) -> SafetyResult:
        """Severities of ``text`` (the model's classifier and the judge, when given, are asked too) and the
        categories that block."""
        sev = self.score(text)
        extra = [classifier.score(text)] if classifier is not None and text.strip() else []
        if judge is not None:
            extra.append(judge.score(text, role))
        for found in extra:
            for c, v in found.items():
                sev[c] = max(sev[c], v)
        limit = LEVELS.get(block_at)
        blocked = [] if block_at == "off" or limit is None else [c for c, s in sev.items() if s >= limit]
        return SafetyResult(sev, blocked)

    def flags(self, text: str, block_at: str) -> bool:
        """The mid-stream check, run on every streamed delta of every request: rules and abuse detector only
        (a forward pass of the model's classifier per delta would double the cost of decoding). Exactly
        ``check(text, block_at).flagged`` without a classifier, asking the abuse detector only when its
        answer can change it (it never lowers a rule's severity, raises hate by at most 3, and alone gives
        hate 2)."""
        limit = LEVELS.get(block_at)
        if block_at == "off" or limit is None:
            return False
        rules = self.rule_scores(text)
        if any(s >= limit for s in rules.values()):
            return True
        undecided = (rules["hate"] and rules["hate"] + 3 >= limit) or (not any(rules.values()) and limit <= 2)
        return bool(undecided) and self.check(text, block_at).flagged
