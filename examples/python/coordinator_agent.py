"""A small agent for the coordinator, written from docs/agents.md and the JSON Schemas in
docs/schemas/ alone, to copy into your own agent: it registers with a heartbeat,
consumes its queues with manual acks, publishes envelopes with the AMQP properties the
contract asks for, and validates everything it receives.

    agent = Agent("qa-py-1", "qa-director", "amqp://guest:guest@127.0.0.1:5672/%2f")
    agent.register()
    task = agent.wait_for("tasks", "feature_handoff")
    agent.publish("testing_started", task["header"]["correlation_id"],
                  causation_id=task["header"]["message_id"])
    agent.ack(task)

Copy this file anywhere. It needs the contract's schemas (the coordinator repository's
docs/schemas/ folder), found in this order: the `schemas` argument of Agent, the
COORDINATOR_SCHEMAS environment variable, a `schemas/` folder beside this file, and
the repository's docs/schemas/ when the file is still in examples/python/. Its Python
dependencies are in requirements.txt (pika, jsonschema, rfc3339-validator).

What it does with what it receives (docs/agents.md, "Your queues"):
- a body that is not JSON, or an envelope or payload its schema refuses: rejected
  without requeue, so the broker moves it to agent.dead_letters, where the coordinator
  keeps it for an operator (`coordinator dead-letter list`); never left unacknowledged;
- a message type it does not know (a newer coordinator's): acknowledged and ignored;
  fields it does not know are allowed by the schemas (contract section 12);
- a copy of a message it has already taken (same header.message_id): acknowledged and
  skipped (delivery is at least once).

Other roles' events (docs/security.md, "What an agent must check itself"): with
`events=True` it consumes its events queue too. The broker copies an event there before
the coordinator has judged it, so each is checked here first and dropped (acked,
recorded in `refused_events`) if its AMQP `user_id` is not its sender (when
`authenticated`: the broker vouches for `user_id`, the body is the sender's word), if it
is more than 5 minutes old or a minute ahead, if it was seen before, or, given
`sender_keys`, if its signature does not verify.

Signatures (docs/security.md, docs/agents.md "Signing"): given `signing_key` (an
Ed25519 private key) and its `key_id`, every envelope it publishes is signed; given
`coordinator_key` (the coordinator's public key, `GET /keys`), every message the
coordinator sends it must carry a signature that verifies, or it is dead-lettered
like any message that breaks the contract.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable

import base64

import pika
import rfc8785
import pika.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from jsonschema import Draft202012Validator, FormatChecker

CONTRACT_VERSION = "1.7"

# How many deliveries the broker hands over before an ack: enough for a burst of tasks
# and notices, few enough that a slow agent does not hoard work.
PREFETCH = 20

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
CONSUMED = ("tasks", "commands")

# The coordinator's freshness window (security.max_age, security.max_ahead).
MAX_AGE = dt.timedelta(minutes=5)
MAX_AHEAD = dt.timedelta(minutes=1)


def event_problem(
    message: dict[str, Any],
    user_id: str | None,
    authenticated: bool,
    sender_keys: dict[str, dict[str, Ed25519PublicKey]] | None,
    now: dt.datetime,
) -> str | None:
    """Why another agent's event must not be acted on (None if it may)."""
    header = message.get("header") if isinstance(message, dict) else None
    if not isinstance(header, dict):
        return "no header"
    source = (header.get("source") or {}).get("agent_id")
    if authenticated and user_id != source:
        return f"its AMQP user_id {user_id!r} is not its sender {source!r} (spoofed)"
    try:
        stamp = dt.datetime.fromisoformat(str(header.get("timestamp")).replace("Z", "+00:00"))
    except ValueError:
        return "its timestamp is not RFC 3339"
    if now - stamp > MAX_AGE:
        return f"stale: sent at {header.get('timestamp')}"
    if stamp - now > MAX_AHEAD:
        return f"from the future: sent at {header.get('timestamp')}"
    if sender_keys is not None:
        why = verify(message, sender_keys.get(source, {}))
        if why is not None:
            return why
    return None


class ContractError(Exception):
    """A received message that does not match the contract's schemas."""


# --- signatures (docs/security.md) ------------------------------------------------------


def signed_form(envelope: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the envelope without header.security.signature,
    in the JSON Canonicalization Scheme (RFC 8785, the rfc8785 package): members
    sorted by UTF-16 code units, no whitespace, numbers as ECMAScript writes them."""
    unsigned = json.loads(json.dumps(envelope))
    security = unsigned.get("header", {}).get("security")
    if isinstance(security, dict):
        security.pop("signature", None)
    return rfc8785.dumps(unsigned)


def sign(envelope: dict[str, Any], key: Ed25519PrivateKey, key_id: str) -> None:
    """Signs in place: header.security.key_id first (it is signed too), then the
    signature over the signed form, standard base64."""
    security = envelope["header"].setdefault("security", {})
    security.pop("signature", None)
    security["key_id"] = key_id
    signature = key.sign(signed_form(envelope))
    security["signature"] = base64.b64encode(signature).decode()


def verify(envelope: dict[str, Any], keys: dict[str, Ed25519PublicKey]) -> str | None:
    """Why the signature does not stand (None if it does), by the keys named by id."""
    security = envelope.get("header", {}).get("security") or {}
    signature, key_id = security.get("signature"), security.get("key_id")
    if not isinstance(signature, str):
        return "header.security.signature is missing"
    key = keys.get(key_id) if isinstance(key_id, str) else None
    if key is None:
        return f"header.security.key_id {key_id!r} names no key this agent trusts"
    try:
        key.verify(base64.b64decode(signature), signed_form(envelope))
    except (InvalidSignature, ValueError):
        return f"the signature does not verify with key {key_id!r}"
    return None


def private_key(b64: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from standard base64 of its 32-byte seed."""
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(b64))


def public_key(b64: str) -> Ed25519PublicKey:
    """An Ed25519 public key from standard base64 of its 32 bytes (`GET /keys`)."""
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64))


class SchemasNotFound(Exception):
    """The contract's JSON Schemas are not where this agent looks for them."""


def find_schemas(explicit: str | Path | None = None) -> Path:
    """The folder holding envelope.json, data/ and metadata/ (see the module's doc)."""
    here = Path(__file__).resolve().parent
    candidates: list[tuple[str, Path]] = []
    if explicit is not None:
        candidates.append(("the schemas argument", Path(explicit)))
    if os.environ.get("COORDINATOR_SCHEMAS"):
        candidates.append(("COORDINATOR_SCHEMAS", Path(os.environ["COORDINATOR_SCHEMAS"])))
    candidates.append(("beside the agent", here / "schemas"))
    if len(here.parents) >= 2:
        candidates.append(("the repository", here.parents[1] / "docs" / "schemas"))
    for _, folder in candidates:
        if (folder / "envelope.json").is_file():
            return folder
    tried = "; ".join(f"{name}: {folder}" for name, folder in candidates)
    raise SchemasNotFound(
        "no envelope.json in any of the places tried "
        f"({tried}). Copy the coordinator repository's docs/schemas/ folder beside "
        f"{Path(__file__).name} as schemas/, or set COORDINATOR_SCHEMAS to it."
    )


def _validator(folder: Path, relative: str) -> Draft202012Validator:
    schema = json.loads((folder / relative).read_text())
    return Draft202012Validator(schema, format_checker=FormatChecker())


def _errors(validator: Draft202012Validator, instance: Any) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


class Contract:
    """The envelope schema and the payload schemas, loaded once."""

    def __init__(self, schemas: str | Path | None = None) -> None:
        self.folder = find_schemas(schemas)
        self.envelope = _validator(self.folder, "envelope.json")
        self._payloads: dict[str, Draft202012Validator] = {}

    def payload(self, relative: str) -> Draft202012Validator:
        if relative not in self._payloads:
            self._payloads[relative] = _validator(self.folder, relative)
        return self._payloads[relative]

    def check(self, message: dict[str, Any]) -> None:
        """Raises ContractError naming what is wrong and where. The caller has already
        set aside message types it does not know."""
        errors = _errors(self.envelope, message)
        if errors:
            raise ContractError(f"envelope: {errors}")
        message_type = message["header"]["message_type"]
        data_schema, metadata_schema = RECEIVED[message_type]
        payload = message.get("payload", {})
        for part, relative in (("data", data_schema), ("metadata", metadata_schema)):
            if relative is None:
                continue
            errors = _errors(self.payload(relative), payload.get(part, {}))
            if errors:
                raise ContractError(f"{message_type} payload.{part}: {errors}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def message_type_of(message: Any) -> str | None:
    """header.message_type if the message has one that is a string."""
    header = message.get("header") if isinstance(message, dict) else None
    kind = header.get("message_type") if isinstance(header, dict) else None
    return kind if isinstance(kind, str) else None


class Agent:
    """One agent: its own connection, its tasks and commands queues consumed with manual
    acks, publisher confirms."""

    def __init__(
        self,
        agent_id: str,
        agent_type: str,
        amqp_url: str,
        schemas: str | Path | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        key_id: str | None = None,
        coordinator_keys: dict[str, Ed25519PublicKey] | None = None,
        events: bool = False,
        authenticated: bool = False,
        sender_keys: dict[str, dict[str, Ed25519PublicKey]] | None = None,
    ) -> None:
        self.agent_id = agent_id
        # Connected as its own broker user: its publishes carry user_id, and so must
        # the events it accepts.
        self.authenticated = authenticated
        self.sender_keys = sender_keys
        self.consumed = CONSUMED + (("events",) if events else ())
        # Why each event was dropped.
        self.refused_events: list[str] = []
        self.signing_key, self.key_id = signing_key, key_id
        self.coordinator_keys = coordinator_keys
        self.agent_type = agent_type
        self.contract = Contract(schemas)
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.channel = self.connection.channel()
        # Publisher confirms: basic_publish returns once the broker has the message,
        # and raises if it was refused or (mandatory) routed nowhere.
        self.channel.confirm_delivery()
        self.channel.basic_qos(prefetch_count=PREFETCH)
        # Deliveries taken from the broker and not yet handed to the caller, per queue.
        self._waiting: dict[str, deque[tuple[int, dict[str, Any]]]] = {
            kind: deque() for kind in self.consumed
        }
        # Delivery tags of messages handed out and not yet acked, by message id.
        self._unacked: dict[str, int] = {}
        self._seen: set[str] = set()
        self._consuming = False
        self.received: list[dict[str, Any]] = []
        # Why each set-aside message was dead-lettered, and the types ignored.
        self.dead_lettered: list[str] = []
        self.ignored: list[str] = []

    def queue(self, kind: str) -> str:
        return f"agent.{self.agent_id}.{kind}"

    # --- publishing -------------------------------------------------------------------

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
            "version": CONTRACT_VERSION,
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
            user_id=self.agent_id if self.authenticated else None,
        )
        routing_key = f"{header['source']['agent_type']}.{header['message_type']}"
        if self.signing_key is not None and self.key_id is not None:
            sign(envelope, self.signing_key, self.key_id)
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

    # --- registration -----------------------------------------------------------------

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
        says to before listening, then starts consuming them."""
        deadline = time.monotonic() + timeout
        while True:
            self.heartbeat()
            if self._queues_exist():
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.agent_id}: its queues ({self.queue('tasks')}, …) do not exist "
                    f"{timeout:g}s after a heartbeat. Automatic registration is probably "
                    "off (it is in production: registration.auto_register = false). Ask "
                    "the coordinator's operator to register this agent once with "
                    f"`coordinator agent add {self.agent_id} {self.agent_type}`, or to "
                    "list it in the configuration, then start it again."
                )
            self.connection.sleep(0.2)
        self._consume()

    def heartbeat(self) -> None:
        """Tells the coordinator it is alive (docs/agents.md: every 30 s or so)."""
        self.publish("heartbeat", self.agent_id, {"status": "healthy"})

    # --- receiving --------------------------------------------------------------------

    def _consume(self) -> None:
        if self._consuming:
            return
        for kind in CONSUMED:
            self.channel.basic_consume(
                self.queue(kind), self._on_delivery(kind), auto_ack=False
            )
        if "events" in self.consumed:
            self.channel.basic_consume(self.queue("events"), self._on_event, auto_ack=False)
        self._consuming = True

    def _on_event(self, channel, method, properties, body: bytes) -> None:
        tag = method.delivery_tag
        try:
            message = json.loads(body)
        except ValueError as e:
            self._dead_letter(channel, tag, "events", f"not JSON ({e})")
            return
        why = event_problem(
            message, properties.user_id, self.authenticated, self.sender_keys, _now()
        )
        if why is None:
            message_id = message["header"].get("message_id")
            if message_id in self._seen:
                why = f"a copy of {message_id}, seen before"
            else:
                self._seen.add(message_id)
        if why is not None:
            channel.basic_ack(tag)
            self.refused_events.append(why)
            _log(f"{self.agent_id}: dropped an event: {why}")
            return
        self._waiting["events"].append((tag, message))

    def _on_delivery(self, kind: str) -> Callable[..., None]:
        def on_delivery(channel, method, _properties, body: bytes) -> None:
            tag = method.delivery_tag
            try:
                message = json.loads(body)
            except ValueError as e:
                self._dead_letter(channel, tag, kind, f"not JSON ({e})")
                return
            message_type = message_type_of(message)
            if message_type is not None and message_type not in RECEIVED:
                # A type this agent does not know (a newer contract's): not an error.
                channel.basic_ack(tag)
                self.ignored.append(message_type)
                _log(f"{self.agent_id}: ignored a {message_type} on {self.queue(kind)}")
                return
            try:
                self.contract.check(message)
            except ContractError as e:
                self._dead_letter(channel, tag, kind, str(e))
                return
            if self.coordinator_keys is not None:
                why = verify(message, self.coordinator_keys)
                if why is not None:
                    self._dead_letter(channel, tag, kind, f"bad signature: {why}")
                    return
            message_id = message["header"]["message_id"]
            if message_id in self._seen:
                channel.basic_ack(tag)
                return
            self._seen.add(message_id)
            self._waiting[kind].append((tag, message))

        return on_delivery

    def _dead_letter(self, channel, tag: int, kind: str, why: str) -> None:
        # requeue=False: the broker dead-letters it (agent.dlx); requeued, it would come
        # straight back, forever.
        channel.basic_reject(tag, requeue=False)
        self.dead_lettered.append(why)
        _log(f"{self.agent_id}: sent a message on {self.queue(kind)} to the dead letters: {why}")

    def next(self, kind: str, timeout: float) -> dict[str, Any] | None:
        """The next new message on its tasks or commands queue, validated; None if
        nothing came within the timeout. Ack it with `ack` once handled."""
        if kind not in self.consumed:
            raise ValueError(f"{kind}: this agent consumes {' and '.join(self.consumed)}")
        self._consume()
        deadline = time.monotonic() + timeout
        while not self._waiting[kind]:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.connection.process_data_events(time_limit=min(left, 1.0))
        tag, message = self._waiting[kind].popleft()
        self._unacked[message["header"]["message_id"]] = tag
        self.received.append(message)
        return message

    def ack(self, message: dict[str, Any]) -> None:
        """Acknowledges a message `next` or `wait_for` handed out: it is handled."""
        tag = self._unacked.pop(message["header"]["message_id"], None)
        if tag is not None:
            self.channel.basic_ack(tag)

    def wait_for(self, kind: str, message_type: str, timeout: float = 20.0) -> dict[str, Any]:
        """The first message of that type on that queue, left for the caller to `ack`;
        the others taken on the way are acked (they stay in `received`)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(kind, max(deadline - time.monotonic(), 0.0))
            if message is None:
                raise TimeoutError(
                    f"{self.agent_id}: no {message_type} on its {kind} queue within {timeout}s"
                )
            if message["header"]["message_type"] == message_type:
                return message
            self.ack(message)

    def close(self) -> None:
        """Closes the connection; what was handed out and not acked goes back to the
        queue, for this agent's next start."""
        if self.connection.is_open:
            self.connection.close()
