"""Web-scale text pipeline: readers → filters/transforms → dedup → decontamination → token shards.

Declare a pipeline in YAML (``mai data run PIPELINE.yaml``) or in Python (:class:`PipelineSpec` and
:func:`run_pipeline`); run it with local processes or on Ray. See docs/data.md.
"""

from mai.data.pipeline.document import Document
from mai.data.pipeline.executor import run_pipeline
from mai.data.pipeline.spec import InputConfig, PipelineSpec, TokenizeConfig, load_spec
from mai.data.pipeline.step import GlobalStep, Step

__all__ = ["Document", "GlobalStep", "InputConfig", "PipelineSpec", "Step", "TokenizeConfig", "load_spec",
           "run_pipeline"]
