"""What the contract stage covered, per operationId, written for `codegen.py check`.

`codegen.py check` (pipeline/check.py) reads `.hangar/contract-coverage.json` for the
"contract-tested" column of its coverage table:
    {operationId: {"schemathesis_cases": int, "sdk_roundtrip": bool}}   (sorted keys)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ContractCoverage:
    # Schemathesis cases per operationId, and each run's one-line summary.
    cases: Counter[str] = field(default_factory=Counter)
    schemathesis_summaries: list[str] = field(default_factory=list)
    sdk_roundtrips: set[str] = field(default_factory=set)

    def schemathesis_run(self, cases_per_operation: Counter[str], summary: str) -> None:
        self.cases.update(cases_per_operation)
        self.schemathesis_summaries.append(summary)

    def roundtrip(self, operation_id: str) -> None:
        self.sdk_roundtrips.add(operation_id)

    @property
    def ran(self) -> bool:
        return bool(self.cases or self.sdk_roundtrips)

    def document(self, operation_ids: Iterable[str]) -> dict[str, dict[str, int | bool]]:
        return {
            op_id: {"schemathesis_cases": self.cases.get(op_id, 0), "sdk_roundtrip": op_id in self.sdk_roundtrips}
            for op_id in sorted(operation_ids)
        }

    def write(self, path: Path, operation_ids: Iterable[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.document(operation_ids), indent=2, sort_keys=True) + "\n"
        # Written whole then renamed, so `codegen.py check` never reads half a file.
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)

    def summary(self) -> list[str]:
        return [
            f"contract stage: {sum(self.cases.values())} schemathesis cases across {len(self.cases)} operations; "
            f"SDK round trip through {len(self.sdk_roundtrips)} operations",
            *self.schemathesis_summaries,
        ]


# One per test session: the schemathesis and SDK tests record into it, conftest writes it.
COVERAGE = ContractCoverage()
