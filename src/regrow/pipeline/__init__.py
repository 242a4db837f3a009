"""Disco-style pipelines of concurrent stages on a regrow cluster.

```python
from regrow.pipeline import Pipeline, Stage, Files, split, group_label, run_pipeline

def words(interface, state, label, lines):
    for line in lines:
        for word in line.split():
            interface.output(hash(word) % 4).add(word, 1)

def count(interface, state, label, records):
    for word, n in records:
        state[word] = state.get(word, 0) + n

def emit(interface, state):
    for word, n in state.items():
        interface.output(0).add(word, n)

job = Pipeline([
    (split, Stage("map", process=words)),
    (group_label, Stage("reduce", init=lambda i, p: {}, process=count, done=emit)),
])
result = run_pipeline(client, job, Files(paths))
for word, n in result:        # records as they become final
    ...
```
"""

from regrow.pipeline.runner import PipelineError, PipelineResult, StageProgress, run_pipeline
from regrow.pipeline.stages import (
    GROUPINGS,
    Files,
    Interface,
    Pipeline,
    Stage,
    group_all,
    group_label,
    group_node,
    group_node_label,
    split,
)

__all__ = [
    "GROUPINGS",
    "Files",
    "Interface",
    "Pipeline",
    "PipelineError",
    "PipelineResult",
    "Stage",
    "StageProgress",
    "group_all",
    "group_label",
    "group_node",
    "group_node_label",
    "run_pipeline",
    "split",
]
