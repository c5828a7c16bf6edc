"""Four Python agents take one feature through the coordinator, end to end: a message
rejected on the way, an SLA warning waited for, every received message validated
against docs/schemas/. Exits 0 when all of it happened as docs/agents.md says.

    python interop.py --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f --workflow wf-py-1

The coordinator must run with a compressed SLA time scale (e.g.
COORDINATOR__SLA__TIME_SCALE=0.0005, so testing_start's 4 h are 7.2 s) for the warning
to come within the wait.
"""

from __future__ import annotations

import argparse
import sys

from coordinator_agent import Agent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--workflow", required=True, help="a new workflow id")
    parser.add_argument("--prefix", default="py", help="agent ids are <role>-<prefix>")
    parser.add_argument("--warning-timeout", type=float, default=30.0)
    args = parser.parse_args()
    wf = args.workflow

    product = Agent(f"product-{args.prefix}", "product-director", args.amqp_url)
    eng = Agent(f"eng-{args.prefix}", "engineering-director", args.amqp_url)
    qa = Agent(f"qa-{args.prefix}", "qa-director", args.amqp_url)
    devops = Agent(f"devops-{args.prefix}", "devops-manager", args.amqp_url)
    agents = [product, eng, qa, devops]
    for agent in agents:
        agent.register()
    print("registered:", ", ".join(a.agent_id for a in agents))

    # Too early: the workflow does not exist yet.
    early = qa.publish("testing_started", wf)
    rejected = qa.wait_for("commands", "message_rejected")
    data = rejected["payload"]["data"]
    assert data["rejected_message_id"] == early["header"]["message_id"], data
    assert data["reason"] == "unknown_workflow", data
    print("rejected as expected:", data["reason"], "-", data["detail"])

    start = product.publish(
        "requirements_ready", wf, {"epic_id": f"EPIC-{wf}", "title": "Python interop"}
    )
    task = eng.wait_for("tasks", "requirements_handoff")
    assert task["header"]["causation_id"] == start["header"]["message_id"], task["header"]
    assert task["payload"]["metadata"]["state"] == "requirements_handoff"
    cause = task["header"]["message_id"]
    for message_type in (
        "handoff_acknowledged",
        "feasibility_assessed",
        "effort_estimated",
        "sprint_initialized",
        "feature_completed",
    ):
        eng.publish(message_type, wf, {"note": message_type}, causation_id=cause)
    print("engineering: sprint done, feature completed")

    task = qa.wait_for("tasks", "feature_handoff")
    cause = task["header"]["message_id"]
    qa.publish("handoff_acknowledged", wf, causation_id=cause)
    # QA waits on purpose: testing_start's warning comes at 80 % of its time.
    warning = qa.wait_for("tasks", "sla_warning", timeout=args.warning_timeout)
    assert warning["payload"]["data"]["clock"] == "testing_start", warning["payload"]
    print("QA warned:", warning["payload"]["data"]["remaining_seconds"], "s left on testing_start")
    for message_type in ("testing_started", "testing_completed", "release_approved"):
        qa.publish(message_type, wf, causation_id=cause)

    task = devops.wait_for("tasks", "release_handoff")
    cause = task["header"]["message_id"]
    for message_type in ("deployment_started", "deployment_completed", "validation_completed"):
        devops.publish(message_type, wf, causation_id=cause)

    deployed = product.wait_for("tasks", "feature_deployed")
    assert deployed["payload"]["metadata"]["state"] == "completed", deployed["payload"]
    print("product: feature deployed; workflow", wf, "completed")

    received = sum(len(a.received) for a in agents)
    print(f"{received} messages received, every one valid against docs/schemas/")
    for agent in agents:
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
