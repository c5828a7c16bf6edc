"""A small agent for the coordinator, written from docs/agents.md and the JSON Schemas in
docs/schemas/ alone: it registers with a heartbeat, publishes envelopes with the AMQP
properties the contract asks for, and validates everything it receives.

    agent = Agent("qa-py-1", "qa-director", "amqp://guest:guest@127.0.0.1:5672/%2f")
    agent.register()
    task = agent.wait_for("tasks", "feature_handoff")
    agent.publish("testing_started", task["header"]["correlation_id"],
                  causation_id=task["header"]["message_id"])
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
from jsonschema import Draft202012Validator, FormatChecker

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"

# What arrives on an agent's tasks and commands queues, and the schemas of its
# payload.data and payload.metadata (docs/protocol.md, "Message catalog").
TASK = ("data/free_form.json", "metadata/task.json")
RECEIVED = {
    "requirements_handoff": TASK,
    "feature_handoff": TASK,
    "bug_report": TASK,
    "clarification_request": TASK,
    "release_handoff": TASK,
    "feature_deployed": TASK,
    "sla_warning": ("data/sla_warning.json", None),
    "sla_breached": ("data/sla_breached_notice.json", None),
    "message_rejected": ("data/message_rejected.json", None),
    "emergency_alert": ("data/emergency_alert.json", "metadata/broadcast.json"),
}


class ContractError(Exception):
    """A received message that does not match the contract's schemas."""


def _validator(relative: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / relative).read_text())
    return Draft202012Validator(schema, format_checker=FormatChecker())


class Contract:
    """The envelope schema and the payload schemas, loaded once."""

    def __init__(self) -> None:
        self.envelope = _validator("envelope.json")
        self._payloads: dict[str, Draft202012Validator] = {}

    def payload(self, relative: str) -> Draft202012Validator:
        if relative not in self._payloads:
            self._payloads[relative] = _validator(relative)
        return self._payloads[relative]

    def check(self, message: dict[str, Any]) -> None:
        """Raises ContractError naming what is wrong."""
        errors = [e.message for e in self.envelope.iter_errors(message)]
        if errors:
            raise ContractError(f"envelope: {errors}")
        message_type = message["header"]["message_type"]
        if message_type not in RECEIVED:
            raise ContractError(f"{message_type} is not a message an agent receives")
        data_schema, metadata_schema = RECEIVED[message_type]
        payload = message.get("payload", {})
        for part, relative in (("data", data_schema), ("metadata", metadata_schema)):
            if relative is None:
                continue
            errors = [e.message for e in self.payload(relative).iter_errors(payload.get(part, {}))]
            if errors:
                raise ContractError(f"{message_type} payload.{part}: {errors}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Agent:
    """One agent: its own connection, its three queues, publisher confirms."""

    def __init__(self, agent_id: str, agent_type: str, amqp_url: str) -> None:
        self.agent_id = agent_id
        self.agent_type = agent_type
        self.contract = Contract()
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.channel = self.connection.channel()
        # Publisher confirms: basic_publish returns once the broker has the message,
        # and raises if it was refused or (mandatory) routed nowhere.
        self.channel.confirm_delivery()
        self.received: list[dict[str, Any]] = []
        self._seen: set[str] = set()

    def queue(self, kind: str) -> str:
        return f"agent.{self.agent_id}.{kind}"

    def envelope(
        self,
        message_type: str,
        correlation_id: str,
        data: dict[str, Any] | None = None,
        causation_id: str | None = None,
    ) -> dict[str, Any]:
        header: dict[str, Any] = {
            "message_id": str(uuid.uuid4()),
            "correlation_id": correlation_id,
            "timestamp": _now().isoformat().replace("+00:00", "Z"),
            "version": "1.1",
            "source": {"agent_id": self.agent_id, "agent_type": self.agent_type},
            "message_type": message_type,
            "priority": "normal",
        }
        if causation_id:
            header["causation_id"] = causation_id
        return {"header": header, "payload": {"data": data or {}, "metadata": {}}}

    def publish_envelope(self, envelope: dict[str, Any]) -> None:
        """Publishes to agent.topic with the properties that repeat the header."""
        header = envelope["header"]
        stamp = dt.datetime.fromisoformat(header["timestamp"].replace("Z", "+00:00"))
        properties = pika.BasicProperties(
            message_id=header["message_id"],
            correlation_id=header["correlation_id"],
            type=header["message_type"],
            app_id=header["source"]["agent_id"],
            # AMQP timestamps are whole seconds: the header's, truncated.
            timestamp=int(stamp.timestamp()),
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/json",
        )
        routing_key = f"{header['source']['agent_type']}.{header['message_type']}"
        self.channel.basic_publish(
            exchange="agent.topic",
            routing_key=routing_key,
            body=json.dumps(envelope).encode(),
            properties=properties,
            mandatory=True,
        )

    def publish(
        self,
        message_type: str,
        correlation_id: str,
        data: dict[str, Any] | None = None,
        causation_id: str | None = None,
    ) -> dict[str, Any]:
        envelope = self.envelope(message_type, correlation_id, data, causation_id)
        self.publish_envelope(envelope)
        return envelope

    def _queues_exist(self) -> bool:
        # A passive declare of a missing queue closes its channel: one channel per try.
        probe = self.connection.channel()
        try:
            for kind in ("tasks", "commands", "events"):
                probe.queue_declare(self.queue(kind), passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return False
        probe.close()
        return True

    def register(self, timeout: float = 10.0) -> None:
        """Heartbeats until its queues exist (automatic registration), as docs/agents.md
        says to before listening."""
        deadline = time.monotonic() + timeout
        while True:
            self.publish("heartbeat", self.agent_id, {"status": "healthy"})
            if self._queues_exist():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.agent_id}: no queues {timeout}s after a heartbeat")
            time.sleep(0.2)

    def next(self, kind: str, timeout: float) -> dict[str, Any] | None:
        """The next new message on one of its queues (tasks or commands), validated and
        acked; None if nothing came within the timeout. A re-sent copy (a message id
        seen before) is acked and skipped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, _properties, body = self.channel.basic_get(self.queue(kind))
            if method is None:
                self.connection.sleep(0.05)
                continue
            message = json.loads(body)
            self.contract.check(message)
            self.channel.basic_ack(method.delivery_tag)
            message_id = message["header"]["message_id"]
            if message_id in self._seen:
                continue
            self._seen.add(message_id)
            self.received.append(message)
            return message
        return None

    def wait_for(self, kind: str, message_type: str, timeout: float = 20.0) -> dict[str, Any]:
        """The first message of that type on that queue; others are kept in `received`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            message = self.next(kind, max(left, 0.0)) if left > 0 else None
            if message is None:
                raise TimeoutError(
                    f"{self.agent_id}: no {message_type} on its {kind} queue within {timeout}s"
                )
            if message["header"]["message_type"] == message_type:
                return message

    def close(self) -> None:
        self.connection.close()
