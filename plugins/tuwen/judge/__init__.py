"""The faithfulness judge (issue 17): after synthesis, the VLM is shown each sample's image and the
sample, and quotes the statements of the answers that the image contradicts (judge prompt v2, the
default; v1 labelled every statement supported, contradicted or unverifiable, at about twice the
completion tokens of the sample itself: docs/BENCHMARKS.md).

An optional stage between synthesis and the quality gate (off by default, TUWEN_JUDGE_ENABLED or
the DAG param `judge`). Its calls are generations like any other: keyed (`keys`), paid once and
stored the moment they arrive (`runner`, `lineage`), planned per partition (`planning`), with a
versioned prompt (`prompts`) and a bounded parser of the verdict (`verdict`). It writes the
`judgement` table; the quality gate's check `faithfulness.judge` reads it.

Against the stand-in VLM, a judgement tests the plumbing (keys, storage, reruns, failures, the
verdict's path into QC), not a model's judgement: the stand-in knows what it wrote and which
contradictions it injected.
"""
