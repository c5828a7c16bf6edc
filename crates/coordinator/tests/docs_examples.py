"""Every JSON example in the documentation is valid JSON and valid against its schema.

An example is a fenced block whose info string starts with `json`; it names its schema
(under docs/schemas/) as `schema=envelope.json`, and for an envelope may name its
payload's as well: `data=data/escalation_acknowledged.json`. A block without a schema,
one that does not parse, and one its schema refuses are each an error. Run by
crates/coordinator/tests/python_agent.rs with the example agent's virtualenv."""

import json
import re
import sys
from pathlib import Path

from jsonschema import Draft202012Validator, FormatChecker

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = ROOT / "docs" / "schemas"
FENCE = re.compile(r"^```json(?P<info>[^\n]*)\n(?P<body>.*?)^```", re.M | re.S)


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def main() -> int:
    docs = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    problems, checked = [], 0
    for doc in docs:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            line = text[: m.start()].count("\n") + 1
            where = f"{doc.relative_to(ROOT)}:{line}"
            info = dict(kv.split("=", 1) for kv in m.group("info").split() if "=" in kv)
            if "schema" not in info:
                problems.append(f"{where}: a json block names no schema (```json schema=...)")
                continue
            try:
                value = json.loads(m.group("body"))
            except json.JSONDecodeError as e:
                problems.append(f"{where}: not JSON: {e}")
                continue
            checks = [(info["schema"], value)]
            if "data" in info:
                checks.append((info["data"], value.get("payload", {}).get("data")))
            for name, instance in checks:
                for error in validator(name).iter_errors(instance):
                    problems.append(f"{where}: {name}: {error.message}")
            checked += 1
    for p in problems:
        print(p)
    print(f"{checked} examples checked, {len(problems)} problems")
    return 1 if problems or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
