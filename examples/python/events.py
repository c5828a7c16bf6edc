"""A Python QA agent checks the events it is sent before acting on them, as
docs/security.md ("What an agent must check itself") says: a spoofed sender and a stale
copy are dropped, the genuine event taken. Against a coordinator with sender
authentication on, each agent connected as its own broker user. Exits 0 when all of it
happened.

    python events.py --qa-url amqp://qa-py:…@127.0.0.1:5672/%2f \
        --eng-url amqp://eng-py:…@127.0.0.1:5672/%2f \
        --spoof-url amqp://guest:guest@127.0.0.1:5672/%2f --workflow wf-py-events-1
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from coordinator_agent import Agent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qa-url", required=True, help="QA's own broker login")
    parser.add_argument("--eng-url", required=True, help="engineering's own broker login")
    parser.add_argument("--spoof-url", required=True, help="someone else's login")
    parser.add_argument("--workflow", required=True)
    args = parser.parse_args()
    wf = args.workflow

    qa = Agent("qa-py", "qa-director", args.qa_url, events=True, authenticated=True)
    eng = Agent("eng-py", "engineering-director", args.eng_url, authenticated=True)
    # Holds other credentials and claims to be engineering: no user_id it could set
    # would be eng-py (the broker refuses a user_id that is not the connection's user).
    spoofer = Agent("eng-py", "engineering-director", args.spoof_url)
    qa.register()

    spoofer.publish("feature_completed", wf, {"note": "spoofed"})
    stale = eng.envelope("feature_completed", wf, {"note": "captured earlier"})
    earlier = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)
    stale["header"]["timestamp"] = earlier.isoformat().replace("+00:00", "Z")
    eng.publish_envelope(stale)
    genuine = eng.publish("feature_completed", wf, {"note": "genuine"})

    event = qa.wait_for("events", "feature_completed")
    assert event["header"]["message_id"] == genuine["header"]["message_id"], event["header"]
    qa.ack(event)
    assert len(qa.refused_events) == 2, qa.refused_events
    assert "spoofed" in qa.refused_events[0], qa.refused_events
    assert qa.refused_events[1].startswith("stale"), qa.refused_events
    print("qa: dropped", "; ".join(qa.refused_events))
    print("qa: took the genuine feature_completed", genuine["header"]["message_id"])
    for agent in (qa, eng, spoofer):
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
