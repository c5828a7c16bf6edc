"""Four Python agents take one feature through the coordinator, end to end: a message
rejected on the way, an SLA warning waited for, a broken message dead-lettered and a
newer contract's message ignored, every received message validated against the
contract's schemas. Exits 0 when all of it happened as docs/agents.md says.

    python interop.py --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f --workflow wf-py-1

The coordinator must run with a compressed SLA time scale (e.g.
COORDINATOR__SLA__TIME_SCALE=0.0005, so testing_start's 4 h are 7.2 s) for the warning
to come within the wait. Run it from any directory: it needs coordinator_agent.py beside
it and the schemas where that module looks (its doc says where).
"""

from __future__ import annotations

import argparse
import json
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

    # What a broken publisher, and a newer coordinator, might put on a queue: a body
    # that is not JSON (to the dead letters) and a type this agent does not know, with
    # a field it does not know (acked and ignored). Both come before the rejection below.
    newer = qa.envelope("capacity_forecast", wf, {"horizon_days": 30})
    newer["header"]["field_from_the_future"] = True
    for body in (b"{not json", json.dumps(newer).encode()):
        qa.channel.basic_publish("", qa.queue("commands"), body, mandatory=True)

    # Too early: the workflow does not exist yet.
    early = qa.publish("testing_started", wf)
    rejected = qa.wait_for("commands", "message_rejected")
    data = rejected["payload"]["data"]
    assert data["rejected_message_id"] == early["header"]["message_id"], data
    assert data["reason"] == "unknown_workflow", data
    qa.ack(rejected)
    print("rejected as expected:", data["reason"], "-", data["detail"])
    assert len(qa.dead_lettered) == 1 and "not JSON" in qa.dead_lettered[0], qa.dead_lettered
    assert qa.ignored == ["capacity_forecast"], qa.ignored
    print("qa: a broken message sent to the dead letters, a capacity_forecast ignored")

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
    eng.ack(task)
    print("engineering: sprint done, feature completed")

    task = qa.wait_for("tasks", "feature_handoff")
    cause = task["header"]["message_id"]
    qa.publish("handoff_acknowledged", wf, causation_id=cause)
    # QA waits on purpose: testing_start's warning comes at 80 % of its time.
    warning = qa.wait_for("tasks", "sla_warning", timeout=args.warning_timeout)
    qa.ack(warning)
    assert warning["payload"]["data"]["clock"] == "testing_start", warning["payload"]
    print("QA warned:", warning["payload"]["data"]["remaining_seconds"], "s left on testing_start")
    for message_type in ("testing_started", "testing_completed", "release_approved"):
        qa.publish(message_type, wf, causation_id=cause)
    qa.ack(task)

    task = devops.wait_for("tasks", "release_handoff")
    cause = task["header"]["message_id"]
    for message_type in ("deployment_started", "deployment_completed", "validation_completed"):
        devops.publish(message_type, wf, causation_id=cause)
    devops.ack(task)

    deployed = product.wait_for("tasks", "feature_deployed")
    assert deployed["payload"]["metadata"]["state"] == "completed", deployed["payload"]
    product.ack(deployed)
    print("product: feature deployed; workflow", wf, "completed")

    received = sum(len(a.received) for a in agents)
    print(f"{received} messages received, every one valid against docs/schemas/")
    for agent in agents:
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
