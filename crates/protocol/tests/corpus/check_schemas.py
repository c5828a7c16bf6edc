"""Runs crates/protocol/tests/corpus/envelopes.json through docs/schemas/envelope.json
and fails if the schema's verdict differs from the case's `valid` (which the Rust
validator must match too: crates/protocol/tests/schemas.rs)."""

import json
import sys
from pathlib import Path

from jsonschema import Draft202012Validator, FormatChecker

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]


def main() -> int:
    schema = json.loads((ROOT / "docs" / "schemas" / "envelope.json").read_text())
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    corpus = json.loads((HERE / "envelopes.json").read_text())
    wrong = []
    for case in corpus["cases"]:
        valid = validator.is_valid(case["envelope"])
        if valid != case["valid"]:
            errors = [e.message for e in validator.iter_errors(case["envelope"])]
            wrong.append(f"{case['name']}: schema says valid={valid}, expected {case['valid']} {errors}")
    for line in wrong:
        print(line)
    print(f"{len(corpus['cases'])} cases, {len(wrong)} disagreements")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
