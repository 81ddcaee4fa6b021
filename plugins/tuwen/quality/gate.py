"""The per-partition quality gate: a Great Expectations (GX Core 1.x) suite over the partition's samples.

Input is one row per sample (see `build_gate_frame`): sample_id, task_type, rounds, roles_ok,
has_single_image_in_first_turn, passed, and one boolean column per check in `checks.CHECKS`
(`ok_<check name with dots as underscores>`, True = the sample passed that check).

The suite holds
- structural rules that must hold for every passed row (roles, the single <image>, rounds per task),
  so a bug between the checks and the database cannot ship a malformed sample;
- distribution rules for the batch: the task mix of passed samples near the configured ratio (per
  task share and KL divergence), the mean number of conversation rounds, the pass rate of every check;
- a hard minimum overall pass rate.

Great Expectations is imported inside `run_gate` (it is slow to import) with analytics off; its
Airflow provider cannot be installed beside Airflow 3.3, so the DAG task calls this directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuwen.domain import SEED_TASK_MIX, TASK_TYPES
from tuwen.quality.checks import CHECKS, QC_CHECKS_VERSION, SampleVerdict

if TYPE_CHECKING:
    import pandas as pd

CHECK_COLUMN_PREFIX = "ok_"
# The one name of the quality suite: the GX suite, its Data Docs site and every qc_run row carry it.
SUITE_NAME = "tuwen_samples"
DATA_DOCS_SITE = SUITE_NAME


def check_column(check_name: str) -> str:
    """The gate frame's boolean column for a check: 'degeneration.truncated' -> 'ok_degeneration_truncated'."""
    return CHECK_COLUMN_PREFIX + check_name.replace(".", "_")


def _default_rounds() -> dict[str, tuple[int, int]]:
    return {"conversation": (1, 5), "complex_reasoning": (1, 1), "detail": (1, 1)}


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate. Pass rates are shares of all rows; the task mix is about passed rows,
    since that is what a release ships."""

    min_pass_rate: float = 0.8  # Settings.qc_min_pass_rate (TUWEN_QC_MIN_PASS_RATE)
    task_mix: Mapping[str, float] = field(default_factory=lambda: dict(SEED_TASK_MIX))  # weights
    task_mix_tolerance: float = 0.05  # absolute difference of a task's share
    max_task_mix_kl_divergence: float = 0.02
    min_conversation_mean_rounds: float = 3.0
    rounds_by_task: Mapping[str, tuple[int, int]] = field(default_factory=_default_rounds)
    min_check_pass_rate: float = 0.9
    check_pass_rate_overrides: Mapping[str, float] = field(default_factory=dict)
    min_rows: int = 1
    # Shares and means of a handful of rows are noise: below this many rows (passed rows for the task
    # mix) the distribution rules are left out of the suite and GateResult says so.
    min_rows_for_distribution: int = 200


@dataclass
class GateResult:
    success: bool
    row_count: int
    pass_rate: float
    check_pass_rates: dict[str, float]
    task_mix: dict[str, float]  # share of each task type among passed rows
    failed_expectations: list[str]  # rule names (expectation meta "rule") that failed
    skipped: list[str]  # rule groups left out of the suite, with why
    validation_result: dict[str, Any]  # GX ExpectationSuiteValidationResult as JSON
    data_docs_index: Path | None = None


def build_gate_frame(records: Iterable[tuple[Hashable, str, SampleVerdict]]) -> pd.DataFrame:
    """One gate row per (sample_id, task_type, verdict), built column by column (no dict per row)."""
    import pandas as pd

    sample_ids: list[Hashable] = []
    task_types: list[str] = []
    rounds: list[int] = []
    passed: list[bool] = []
    ok_by_check: dict[str, list[bool]] = {name: [] for name in CHECKS}
    for sample_id, task_type, verdict in records:
        sample_ids.append(sample_id)
        task_types.append(task_type)
        rounds.append(int(verdict.metrics.get("rounds", 0)))
        passed.append(verdict.passed)
        for name, column in ok_by_check.items():
            column.append(name not in verdict.reasons)
    columns: dict[str, Any] = {
        "sample_id": sample_ids,
        "task_type": task_types,
        "rounds": pd.array(rounds, dtype="int64"),
        "roles_ok": pd.array(ok_by_check["structure.roles"], dtype=bool),
        "has_single_image_in_first_turn": pd.array(ok_by_check["structure.image_placeholder"], dtype=bool),
        "passed": pd.array(passed, dtype=bool),
    }
    columns.update({check_column(name): pd.array(ok, dtype=bool) for name, ok in ok_by_check.items()})
    return pd.DataFrame(columns)


def _task_shares(weights: Mapping[str, float]) -> dict[str, float]:
    total = float(sum(weights.values()))
    return {task: weight / total for task, weight in weights.items()}


def run_gate(
    df: pd.DataFrame,
    config: GateConfig | None = None,
    *,
    partition: str = "partition",
    data_docs_dir: str | Path | None = None,
) -> GateResult:
    """Validate one partition's gate frame; with `data_docs_dir`, also build the Data Docs site there."""
    config = config or GateConfig()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    frame = df.copy()
    for task in TASK_TYPES:
        frame[f"is_{task}"] = frame["task_type"] == task
    check_columns = {name: check_column(name) for name in CHECKS if check_column(name) in frame.columns}
    passed_rows = int(frame["passed"].sum())

    # The context comes first: an ExpectationSuite resolves the current context as soon as
    # expectations are added to it.
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    for site_name in list(context.list_data_docs_sites()):
        context.delete_data_docs_site(site_name)  # the default site writes to a temporary directory
    actions: list[Any] = []  # GX's ValidationAction subclasses
    if data_docs_dir is not None:
        context.add_data_docs_site(
            site_name=DATA_DOCS_SITE,
            site_config={
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(Path(data_docs_dir).resolve()),
                },
            },
        )
        actions.append(
            gx.checkpoint.UpdateDataDocsAction(name="update_data_docs", site_names=[DATA_DOCS_SITE])
        )

    asset = context.data_sources.add_pandas("tuwen").add_dataframe_asset(name=f"samples_{partition}")
    batch_definition = asset.add_batch_definition_whole_dataframe("whole_partition")
    suite, skipped = _build_suite(gx, config, passed_rows, check_columns)
    suite = context.suites.add(suite)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{SUITE_NAME} {partition}", data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{SUITE_NAME}_gate",
            validation_definitions=[validation],
            actions=actions,
            result_format={"result_format": "SUMMARY"},
        )
    )
    checkpoint_result = checkpoint.run(batch_parameters={"dataframe": frame})
    (validation_result,) = checkpoint_result.run_results.values()
    # Round-trip through json so numpy scalars become plain numbers and the dict is storable as JSONB.
    result_dict = json.loads(json.dumps(validation_result.to_json_dict(), default=str))

    failed = [
        (r["expectation_config"].get("meta") or {}).get("rule", r["expectation_config"]["type"])
        for r in result_dict["results"]
        if not r["success"]
    ]
    docs_index = None
    if data_docs_dir is not None:
        docs_index = Path(data_docs_dir).resolve() / "index.html"

    shares = {
        task: float(frame.loc[frame["passed"], f"is_{task}"].mean()) if passed_rows else 0.0
        for task in TASK_TYPES
    }
    return GateResult(
        success=bool(result_dict["success"]),
        row_count=len(frame),
        pass_rate=float(frame["passed"].mean()) if len(frame) else 0.0,
        check_pass_rates={name: float(frame[column].mean()) for name, column in check_columns.items()},
        task_mix=shares,
        failed_expectations=failed,
        skipped=skipped,
        validation_result=result_dict,
        data_docs_index=docs_index,
    )


class _Suite:
    """An ExpectationSuite being built: each expectation carries the rule name GateResult reports."""

    def __init__(self, gx: Any) -> None:
        from great_expectations.expectations.row_conditions import Column

        self.E = gx.expectations
        self.Column = Column
        self.suite = gx.ExpectationSuite(
            name=SUITE_NAME, meta={"qc_checks_version": QC_CHECKS_VERSION, "checks": sorted(CHECKS)}
        )
        # Condition objects, not pandas query strings (deprecated since GX Core 1.9).
        self.passed = Column("passed") == True  # noqa: E712 (builds a GX condition, not a Python comparison)

    def add(self, rule: str, expectation: Any) -> None:
        expectation.meta = {"rule": rule}
        self.suite.add_expectation(expectation)


def _build_suite(
    gx: Any, config: GateConfig, passed_rows: int, check_columns: Mapping[str, str]
) -> tuple[Any, list[str]]:
    """The suite for one partition, and the rule groups left out of it (with why)."""
    suite = _Suite(gx)
    _add_structural_rules(suite, config)
    _add_pass_rate_rules(suite, config, check_columns)
    if passed_rows < config.min_rows_for_distribution:
        return suite.suite, [
            f"task_mix, conversation.mean_rounds: {passed_rows} passed rows < {config.min_rows_for_distribution}"
        ]
    _add_distribution_rules(suite, config)
    return suite.suite, []


def _add_structural_rules(suite: _Suite, config: GateConfig) -> None:
    """Every passed sample loads in LLaVA / Qwen2.5-VL / LLaMA-Factory unchanged."""
    E, Column, passed_only = suite.E, suite.Column, {"row_condition": suite.passed}
    suite.add("table.row_count", E.ExpectTableRowCountToBeBetween(min_value=config.min_rows))
    suite.add("structure.unique_sample_id", E.ExpectColumnValuesToBeUnique(column="sample_id"))
    suite.add(
        "structure.known_task_type",
        E.ExpectColumnValuesToBeInSet(column="task_type", value_set=list(TASK_TYPES)),
    )
    suite.add(
        "structure.roles_ok",
        E.ExpectColumnValuesToBeInSet(column="roles_ok", value_set=[True], **passed_only),
    )
    suite.add(
        "structure.single_image_in_first_turn",
        E.ExpectColumnValuesToBeInSet(
            column="has_single_image_in_first_turn", value_set=[True], **passed_only
        ),
    )
    for task, (low, high) in config.rounds_by_task.items():
        suite.add(
            f"structure.rounds.{task}",
            E.ExpectColumnValuesToBeBetween(
                column="rounds",
                min_value=low,
                max_value=high,
                row_condition=(Column("task_type") == task) & suite.passed,
            ),
        )


def _add_pass_rate_rules(suite: _Suite, config: GateConfig, check_columns: Mapping[str, str]) -> None:
    """The hard minimum overall, and one per check so a single broken rule shows by name."""
    E = suite.E
    suite.add(
        "pass_rate.overall", E.ExpectColumnMeanToBeBetween(column="passed", min_value=config.min_pass_rate)
    )
    for name, column in check_columns.items():
        minimum = config.check_pass_rate_overrides.get(name, config.min_check_pass_rate)
        suite.add(f"pass_rate.{name}", E.ExpectColumnMeanToBeBetween(column=column, min_value=minimum))


def _add_distribution_rules(suite: _Suite, config: GateConfig) -> None:
    """What ships: the task mix of passed rows and the depth of conversations."""
    E, Column, passed_only = suite.E, suite.Column, {"row_condition": suite.passed}
    shares = _task_shares(config.task_mix)
    for task in TASK_TYPES:
        share = shares.get(task, 0.0)
        suite.add(
            f"task_mix.{task}",
            E.ExpectColumnMeanToBeBetween(
                column=f"is_{task}",
                min_value=max(0.0, share - config.task_mix_tolerance),
                max_value=min(1.0, share + config.task_mix_tolerance),
                **passed_only,
            ),
        )
    suite.add(
        "task_mix.kl_divergence",
        E.ExpectColumnKLDivergenceToBeLessThan(
            column="task_type",
            partition_object={
                "values": list(TASK_TYPES),
                "weights": [shares.get(t, 0.0) for t in TASK_TYPES],
            },
            threshold=config.max_task_mix_kl_divergence,
            **passed_only,
        ),
    )
    suite.add(
        "conversation.mean_rounds",
        E.ExpectColumnMeanToBeBetween(
            column="rounds",
            min_value=config.min_conversation_mean_rounds,
            row_condition=(Column("task_type") == "conversation") & suite.passed,
        ),
    )
