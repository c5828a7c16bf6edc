"""Two Python agents sign what they send and check what the coordinator signs, against
a coordinator that requires signatures (security.signatures = "require"). Exits 0
when all of it happened as docs/agents.md ("Signing") says.

    python signed.py --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f \
        --http http://127.0.0.1:8080 --workflow wf-py-signed-1 \
        --product-key <base64 seed> --eng-key <base64 seed>

The agents must be registered with their public keys first, e.g.
`coordinator agent add product-py product-director --public-key <base64> --key-id product-py-1`
(key ids: <agent id>-1). The coordinator's public key comes from its GET /keys.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator_agent import Agent, private_key, public_key, sign, verify


# Floats whose shortest forms differ between languages (Python writes 1e-07 and
# 1e+21, Rust 1e-7 and 1e21, JCS 1e-7 and 1e+21), a negative zero, a fraction with no
# exact binary form, and keys beyond ASCII (JCS sorts them by UTF-16 code units).
AWKWARD = {"small": 1e-7, "big": 1e21, "tenth": 0.1, "minus_zero": -0.0,
           "größe": 3, "名前": "x", "😀": True}


def coordinator_keys(http: str) -> dict:
    """The coordinator's public keys, by key id, from GET /keys."""
    with urllib.request.urlopen(f"{http.rstrip('/')}/keys", timeout=10) as answer:
        keys = json.load(answer)["keys"]
    return {k["key_id"]: public_key(k["public_key"]) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--http", required=True, help="the coordinator's HTTP address")
    parser.add_argument("--workflow", required=True, help="a new workflow id")
    parser.add_argument("--product-key", required=True)
    parser.add_argument("--eng-key", required=True)
    args = parser.parse_args()
    wf = args.workflow
    trusted = coordinator_keys(args.http)
    print("the coordinator signs with", ", ".join(trusted))

    product = Agent(
        "product-py", "product-director", args.amqp_url,
        signing_key=private_key(args.product_key), key_id="product-py-1",
        coordinator_keys=trusted,
    )
    eng = Agent(
        "eng-py", "engineering-director", args.amqp_url,
        signing_key=private_key(args.eng_key), key_id="eng-py-1",
        coordinator_keys=trusted,
    )
    for agent in (product, eng):
        agent.register()

    # Numbers that JSON libraries write in different ways, and keys beyond ASCII: the
    # signed form is RFC 8785's, so they verify on both sides.
    start = product.publish(
        "requirements_ready", wf,
        {"epic_id": f"EPIC-{wf}", "title": "signed", **AWKWARD},
    )
    task = eng.wait_for("tasks", "requirements_handoff")
    # The task passed the agent's check of the coordinator's signature; show it again.
    # It carries the start's data, floats included, signed by the coordinator in Rust.
    assert verify(task, trusted) is None
    assert all(task["payload"]["data"][k] == v for k, v in AWKWARD.items()), task["payload"]
    forged = json.loads(json.dumps(task))
    forged["payload"]["metadata"]["state"] = "completed"
    assert verify(forged, trusted) is not None, "a changed task must not verify"
    assert task["header"]["causation_id"] == start["header"]["message_id"]
    eng.ack(task)
    print("engineering: a signed task, its signature checked; a changed copy refused")

    # Unsigned, and signed with a key the coordinator does not know: both refused.
    unsigned = eng.envelope("handoff_acknowledged", wf)
    eng.signing_key, key = None, eng.signing_key
    eng.publish_envelope(unsigned)
    rejected = eng.wait_for("commands", "message_rejected")
    assert rejected["payload"]["data"]["reason"] == "missing_signature", rejected["payload"]
    eng.ack(rejected)
    stranger = eng.envelope("handoff_acknowledged", wf)
    sign(stranger, Ed25519PrivateKey.generate(), "eng-py-1")
    eng.publish_envelope(stranger)
    rejected = eng.wait_for("commands", "message_rejected")
    assert rejected["payload"]["data"]["reason"] == "bad_signature", rejected["payload"]
    eng.ack(rejected)
    print("engineering: unsigned and wrongly signed messages refused, as they should be")

    eng.signing_key = key
    cause = start["header"]["message_id"]
    for message_type in ("handoff_acknowledged", "feasibility_assessed", "effort_estimated",
                         "sprint_initialized"):
        eng.publish(message_type, wf, {"note": message_type, **AWKWARD}, causation_id=cause)
    print("engineering: signed messages sent; the sprint is on")
    for agent in (product, eng):
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
