"""URL blocklist: drop documents whose ``metadata["url"]`` is on a blocked domain (or any subdomain of
one) or contains a blocked word. Documents without a URL pass."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import urlsplit

from mai.data.pipeline.document import Document
from mai.data.pipeline.step import Step
from mai.errors import MaiError


@dataclasses.dataclass
class UrlFilterConfig:
    domains: list[str] = dataclasses.field(default_factory=list)
    domains_file: str | None = None  # one domain per line, '#' comments
    banned_words: list[str] = dataclasses.field(default_factory=list)  # matched anywhere in the URL


def _domain_of(url: str) -> str:
    host = urlsplit(url if "//" in url else f"//{url}").hostname or ""
    return host.lower().rstrip(".")


class UrlFilter(Step):
    Config = UrlFilterConfig
    kind = "url_filter"

    def __init__(self, cfg: UrlFilterConfig, label: str | None = None) -> None:
        super().__init__(cfg, label)
        domains = [d.strip().lower() for d in cfg.domains]
        if cfg.domains_file:
            path = Path(cfg.domains_file)
            if not path.is_file():
                raise MaiError(f"url_filter.domains_file not found: {path}")
            domains += [ln.split("#")[0].strip().lower() for ln in path.read_text().splitlines()]
        self.domains = {d.removeprefix("www.") for d in domains if d}
        self.words = [w.lower() for w in cfg.banned_words]

    def __call__(self, doc: Document) -> str | None:
        url = doc.metadata.get("url")
        if not url:
            return None
        host = _domain_of(str(url))
        parts = host.split(".")
        if any(".".join(parts[i:]) in self.domains for i in range(len(parts))):
            return "blocked_domain"
        low = str(url).lower()
        if any(w in low for w in self.words):
            return "banned_word"
        return None
