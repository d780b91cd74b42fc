"""Unicode repair with ftfy: mojibake ("donâ€™t" → "don’t"), broken escapes, control characters."""

from __future__ import annotations

import dataclasses

from mai.data.pipeline.document import Document
from mai.data.pipeline.step import Step


@dataclasses.dataclass
class UnicodeFixConfig:
    normalization: str = "NFC"


class UnicodeFix(Step):
    Config = UnicodeFixConfig
    kind = "unicode_fix"

    def __call__(self, doc: Document) -> str | None:
        import ftfy

        fixed = ftfy.fix_text(doc.text, normalization=self.cfg.normalization)
        if fixed != doc.text:
            doc.text = fixed
            doc.metadata["unicode_fixed"] = True
        return None
