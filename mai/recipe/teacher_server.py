"""The recipe's teacher: `mai serve` in a child process (:mod:`mai.serve.child`), or a server already running.

The child is started only when a stage needs it and stopped when the recipe ends (or earlier, once no later
stage asks it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mai.recipe.config import TeacherConfig
from mai.serve.child import ServeChild, require_reachable


class TeacherServer:
    """``url`` starts the teacher on first use; ``stop()`` ends it (safe to call more than once)."""

    def __init__(self, cfg: TeacherConfig, log_path: Path, log: Callable[[str], None] = print) -> None:
        self.cfg, self.log_path, self.log = cfg, log_path, log
        self.child = ServeChild(["--model", cfg.model, "--name", cfg.name, "--max-seq-len",
                                 str(cfg.max_seq_len), "--threads", str(cfg.threads)],
                                log_path, cfg.startup_timeout_s, log)
        self._url: str | None = None

    def url(self, stage: str) -> str:
        if self.cfg.base_url:  # a running server: it must answer
            require_reachable(self.cfg.base_url, f"stage {stage}: the teacher")
            return self.cfg.base_url
        if self._url is None:
            self._url = self.child.start(f"stage {stage}: the teacher")
            self.log(f"teacher    {self.cfg.model} served at {self._url} for stage {stage} "
                     f"(log: {self.log_path})")
        return self._url

    def stop(self) -> None:
        self._url = None
        if self.child.stop():
            self.log("teacher    stopped")
