"""Where `mai eval --judge` asks its judge: an OpenAI-compatible server already running (``BASE_URL`` or
``BASE_URL#MODEL``), or a model that the run serves itself with `mai serve` for as long as it judges (a
model of a catalog file, or a model path) — through :mod:`mai.serve.child`, as the recipe serves its teacher.

The key comes from an environment variable (``MAI_JUDGE_API_KEY`` unless the config names another), so it
is never written into the run's saved config; a catalog judge without one uses the catalog's first key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mai.errors import MaiError
from mai.serve.child import ServeChild, require_reachable


@dataclass
class JudgeSettings:
    """The ``judge`` section of an eval config: who judges, and which two answer sets."""

    model: str | None = None  # BASE_URL[#MODEL], a model of `catalog`, or a model path served for the run
    catalog: str | None = None  # a `mai serve` catalog file in which `model` is a model name
    a: str | None = None  # model A: a path mai loads, or a .jsonl of {answer} (and optionally {prompt})
    b: str | None = None  # model B (the baseline), the same way
    prompts: str | None = None  # JSONL of strings or {prompt}; none = chitchat-dataset openers
    max_tokens: int = 256  # of each judge reply
    workers: int = 4  # judge requests in flight
    # ask for {"reason", "verdict"} JSON under a json_schema response_format (mai serve, vLLM and OpenAI
    # constrain decoding to it): a well-formed verdict even from a small judge; off for servers without it
    structured: bool = True
    api_key_env: str = "MAI_JUDGE_API_KEY"  # the environment variable holding the judge's key
    startup_timeout_s: float = 600.0  # for a judge this run serves


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


class JudgeEndpoint:
    """:meth:`check` finds bad settings before any answer is generated; :meth:`open` returns (base URL,
    model name, key), starting the judge's server when the run serves it; :meth:`close` stops that server."""

    def __init__(self, settings: JudgeSettings, log_path: Path, echo: Callable[[str], None] = print) -> None:
        self.s, self.log_path, self.echo = settings, log_path, echo
        self.child: ServeChild | None = None
        self.key = os.environ.get(settings.api_key_env) or "none"

    def check(self) -> None:
        spec = self.s.model or ""
        if is_url(spec):
            require_reachable(spec.partition("#")[0], "the judge")
        elif self.s.catalog:
            from mai.serve.catalog import load_catalog

            catalog = load_catalog(self.s.catalog)
            names = [m.name for m in catalog.models]
            if spec not in names:
                raise MaiError(f"judge '{spec}' is not a model of the catalog {self.s.catalog} "
                               f"(it serves {', '.join(names)})")
            if self.key == "none" and catalog.api_keys:
                self.key = catalog.api_keys[0].key
        else:
            from mai.interop.bundled import resolve_path

            if not resolve_path(spec).exists():
                raise MaiError(f"judge '{spec}' is neither a URL (http://HOST:PORT/v1[#MODEL]), a model of "
                               "--judge-catalog, nor a model path")

    def open(self) -> tuple[str, str, str]:
        spec = self.s.model or ""
        if is_url(spec):
            base, _, name = spec.partition("#")
            return base, name or self._only_model(base), self.key
        if self.s.catalog:
            serve_args, name = ["--catalog", self.s.catalog], spec
        else:
            serve_args, name = ["--model", spec, "--name", "judge"], "judge"
        self.child = ServeChild(serve_args, self.log_path, self.s.startup_timeout_s, self.echo)
        url = self.child.start(f"the judge {spec}")
        self.echo(f"judge      {spec} served by `mai serve` (pid {self.child.pid}) at {url} "
                  f"(log: {self.log_path})")
        return url, name, self.key

    def close(self) -> None:
        if self.child is not None and self.child.stop():
            self.echo("judge      stopped")

    def _only_model(self, base: str) -> str:
        """The one model a server lists at /v1/models; else the user must say which (``URL#MODEL``)."""
        import openai

        try:
            client = openai.OpenAI(base_url=base, api_key=self.key, max_retries=1)
            names = [m.id for m in client.models.list()]
        except openai.APIError as exc:
            raise MaiError(f"the judge at {base} does not list its models ({type(exc).__name__}): "
                           f"give {base}#MODEL") from None
        if len(names) != 1:
            raise MaiError(f"the judge at {base} serves {len(names)} models ({', '.join(names)}): "
                           f"give {base}#MODEL")
        return names[0]
