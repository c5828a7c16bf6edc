//! Admission: the one place a delivery from the inbox becomes a message the coordinator
//! acts on ([`Admitted`]) or a refusal ([`Refused`]). Everything downstream (the rate
//! limits, the batch, the audit log, dead letters) takes what this decides and reads
//! neither the AMQP `app_id`, `user_id` nor headers again.
//!
//! Each check runs once, in this order, cheapest first (docs/security.md names each):
//!
//! | # | check | refuses as | function |
//! |---|---|---|---|
//! | 1 | the body fits `limits.max_body_bytes` | `too_large` | `envelope::check_body_size` |
//! | 2 | the body is an envelope (parsed once) | `malformed_json`, `missing_field`, `invalid_field` | `envelope::parse`, `envelope::parse_value` |
//! | 3 | a major version this coordinator speaks | `unsupported_version` | `envelope::check_version` |
//! | 4 | the AMQP properties and routing key repeat the header | `property_mismatch` | `envelope::check_properties` |
//! | 5 | the role is known and may send the type | `unknown_role`, `unknown_message_type`, `sender_not_allowed` | `envelope::check_catalog` |
//! | 6 | stored fields fit: texts, and every definition's business key | `too_large` | [`Processor::check_stored`] |
//! | 7 | `timestamp + ttl` has not passed | `expired` | `envelope::check_fresh` |
//! | 8 | `timestamp` is within the window (replay protection) | `stale`, `from_the_future` | `envelope::check_window` |
//! | 9 | the broker vouched for the sender | `unauthenticated` | [`authenticate`] |
//! | 10 | the sender's signature stands | `missing_signature`, `bad_signature` | `signing::verify_all` |
//!
//! An operator's replay of a dead letter (`x-replay-of`, published by the coordinator's
//! own broker user, which the broker vouches for) skips 8 to 10; the header from anyone
//! else means nothing. A delivery is judged at the time it was received (`at`): one a
//! rate limit held back is admitted again, when released, as of when it arrived.

use chrono::{DateTime, Utc};
use serde_json::Value;

use protocol::envelope::{self, DeliveryMeta, Envelope};
use protocol::reject::{Reason, Rejected};
use protocol::signing::{self, Pending, SignatureError};

use super::{Agents, Inbound, Processor, SignatureMode};

/// Who sent an admitted message: built only here, from what the broker vouches for
/// where sender authentication is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    agent_id: String,
    role: String,
    vouched: Vouched,
}

/// What vouches for a [`Sender`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vouched {
    /// The broker: the AMQP `user_id`, which RabbitMQ checks against the connection's
    /// user, is the body's `header.source.agent_id`.
    Broker,
    /// Nothing: sender authentication is off, and the body's `header.source.agent_id`
    /// (repeated in `app_id`) is taken at its word (docs/security.md).
    Body,
}

impl Vouched {
    pub fn as_str(self) -> &'static str {
        match self {
            Vouched::Broker => "broker",
            Vouched::Body => "body",
        }
    }
}

impl Sender {
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// Its role, `header.source.agent_type` (which the catalogue let send this type and
    /// the routing key repeats; the agent's broker user may publish only under it).
    pub fn role(&self) -> &str {
        &self.role
    }

    pub fn vouched(&self) -> Vouched {
        self.vouched
    }

    /// A sender as if admitted, for the unit tests of what takes one.
    #[cfg(test)]
    pub fn for_tests(agent_id: &str, role: &str) -> Sender {
        Sender {
            agent_id: agent_id.into(),
            role: role.into(),
            vouched: Vouched::Body,
        }
    }
}

/// A delivery every check let through.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub envelope: Envelope,
    pub sender: Sender,
    /// The dead letter an operator's replay re-publishes (exempt from the window, the
    /// sender check and the signature).
    pub replay_of: Option<i64>,
    /// With `security.signatures = "verify"`: why its signature would have been refused
    /// (it is applied all the same, logged and counted).
    pub bad_signature: Option<Rejected>,
}

/// A delivery a check refused.
#[derive(Debug, Clone)]
pub struct Refused {
    pub rejected: Rejected,
    /// Its message id and sender as the delivery claims them (the header if the body
    /// parses that far, else the AMQP properties): unverified, for the dead letter, the
    /// refusal notice and deduplication only, never charged to anyone's limit.
    pub message_id: Option<String>,
    pub claimed_sender: Option<String>,
}

/// What admission made of one delivery. Nearly every delivery is admitted: the large
/// variant is the common one, so it is not boxed (that would cost an allocation per
/// message to save space on the rare refusal).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Admission {
    Admitted(Admitted),
    Refused(Refused),
}

impl Admission {
    pub fn message_id(&self) -> Option<&str> {
        match self {
            Admission::Admitted(a) => Some(&a.envelope.header.message_id),
            Admission::Refused(r) => r.message_id.as_deref(),
        }
    }

    /// Its sender's agent id: the admitted sender, or the one a refused delivery claims.
    pub fn sender_id(&self) -> Option<&str> {
        match self {
            Admission::Admitted(a) => Some(a.sender.agent_id()),
            Admission::Refused(r) => r.claimed_sender.as_deref(),
        }
    }

    pub fn admitted(&self) -> Option<&Admitted> {
        match self {
            Admission::Admitted(a) => Some(a),
            Admission::Refused(_) => None,
        }
    }

    pub fn envelope(&self) -> Option<&Envelope> {
        self.admitted().map(|a| &a.envelope)
    }
}

/// What an operator's replay of a letter refused as `reason` skips, if it skips the
/// check that refused it: the check's name, and whether that check vouched for who sent
/// it (then `dead-letter replay` wants `--force` and a note: the replay would otherwise
/// be applied, and answered in the coordinator's name, as if someone had vouched for
/// its sender).
pub fn skipped_by_a_replay(reason: Reason) -> Option<(&'static str, bool)> {
    match reason {
        Reason::Stale | Reason::FromTheFuture => {
            Some(("the freshness window (security.max_age, max_ahead)", false))
        }
        Reason::Unauthenticated => Some(("sender authentication (the AMQP user_id)", true)),
        Reason::MissingSignature | Reason::BadSignature => Some(("the sender's signature", true)),
        _ => None,
    }
}

/// Sender authentication (check 9): the AMQP `user_id`, which the broker checks against
/// the connection's user, must be `header.source.agent_id`; with authentication off the
/// body's agent id is taken as it is.
pub fn authenticate(
    env: &Envelope,
    meta: &DeliveryMeta,
    required: bool,
) -> Result<Sender, Rejected> {
    let h = &env.header;
    let vouched = if required {
        envelope::check_sender(env, meta)?;
        Vouched::Broker
    } else {
        Vouched::Body
    };
    Ok(Sender {
        agent_id: h.source.agent_id.clone(),
        role: h.source.agent_type.clone(),
        vouched,
    })
}

/// A delivery after the checks that come before its signature (not boxed, as
/// [`Admission`] is not).
#[allow(clippy::large_enum_variant)]
enum Prechecked {
    Refused(Refused),
    /// Admitted unless its signature (to verify, or why there is none to verify; `None`
    /// when it is not checked) does not stand.
    Pending {
        admitted: Admitted,
        signature: Option<Result<Pending, SignatureError>>,
    },
}

impl Processor {
    /// Admits one delivery received at `at`; `keys` holds the senders' public keys.
    pub fn admit(&self, d: Inbound<'_>, at: DateTime<Utc>, keys: &Agents) -> Admission {
        let verdict = |s: &Result<Pending, SignatureError>| match s {
            Ok(pending) => pending.verify(),
            Err(e) => Err(e.clone()),
        };
        match self.precheck(d, at, keys) {
            Prechecked::Refused(r) => Admission::Refused(r),
            Prechecked::Pending {
                admitted,
                signature,
            } => self.signed(admitted, signature.as_ref().map(verdict), keys),
        }
    }

    /// [`Processor::admit`] of each delivery, in order, with their signatures verified
    /// together (`signing::verify_all`: about half the cost of one at a time).
    pub fn admit_all(
        &self,
        deliveries: &[Inbound<'_>],
        at: DateTime<Utc>,
        keys: &Agents,
    ) -> Vec<Admission> {
        let pre: Vec<Prechecked> = deliveries
            .iter()
            .map(|d| self.precheck(*d, at, keys))
            .collect();
        let ready: Vec<&Pending> = pre
            .iter()
            .filter_map(|p| match p {
                Prechecked::Pending {
                    signature: Some(Ok(pending)),
                    ..
                } => Some(pending),
                _ => None,
            })
            .collect();
        let mut verdicts = signing::verify_all(&ready).into_iter();
        pre.into_iter()
            .map(|p| match p {
                Prechecked::Refused(r) => Admission::Refused(r),
                Prechecked::Pending {
                    admitted,
                    signature,
                } => {
                    let verdict = signature.map(|s| {
                        s.and_then(|_| verdicts.next().unwrap_or(Err(SignatureError::Missing)))
                    });
                    self.signed(admitted, verdict, keys)
                }
            })
            .collect()
    }

    /// Checks 1 to 9, and the signature made ready to verify (check 10).
    fn precheck(&self, d: Inbound<'_>, at: DateTime<Utc>, keys: &Agents) -> Prechecked {
        let security = &self.security;
        let replay_of = d
            .meta
            .replay_of
            .filter(|_| d.meta.user_id.as_deref() == Some(security.own_user.as_str()));
        let checks_signature = security.signatures != SignatureMode::Off && replay_of.is_none();
        let parsed = envelope::check_body_size(d.body, &self.limits).and_then(|()| {
            // Parsed once: into a JSON value where the signature needs its canonical
            // form, straight into the envelope where it does not.
            if checks_signature {
                let value = envelope::parse_value(d.body)?;
                let env = envelope::from_value(&value)?;
                Ok((env, Some(value)))
            } else {
                envelope::parse(d.body).map(|env| (env, None))
            }
        });
        let checked = parsed.and_then(|(env, value)| {
            envelope::check_version(&env)?;
            envelope::check_properties(&env, d.meta)?;
            envelope::check_catalog(&env, &self.catalog)?;
            self.check_stored(&env)?;
            envelope::check_fresh(&env, at)?;
            if replay_of.is_none() {
                envelope::check_window(&env, at, &security.window)?;
            }
            let sender = authenticate(
                &env,
                d.meta,
                security.authenticate_senders && replay_of.is_none(),
            )?;
            Ok((env, value, sender))
        });
        match checked {
            Ok((envelope, value, sender)) => {
                let signature = value.map(|v| {
                    let registered = keys.keys_of(sender.agent_id());
                    signing::prepare(v, registered.iter().map(|(id, k)| (id.as_str(), k)))
                });
                Prechecked::Pending {
                    admitted: Admitted {
                        envelope,
                        sender,
                        replay_of,
                        bad_signature: None,
                    },
                    signature,
                }
            }
            Err(rejected) => Prechecked::Refused(self.refused(d, rejected)),
        }
    }

    /// Check 10: the admitted delivery, given its signature's verdict.
    fn signed(
        &self,
        mut admitted: Admitted,
        verdict: Option<Result<String, SignatureError>>,
        keys: &Agents,
    ) -> Admission {
        let Some(Err(e)) = verdict else {
            return Admission::Admitted(admitted);
        };
        let rejected = signature_refusal(e, admitted.sender.agent_id(), keys);
        if self.security.signatures == SignatureMode::Verify {
            admitted.bad_signature = Some(rejected);
            Admission::Admitted(admitted)
        } else {
            Admission::Refused(Refused {
                message_id: Some(admitted.envelope.header.message_id),
                claimed_sender: Some(admitted.sender.agent_id),
                rejected,
            })
        }
    }

    /// A refusal, with the ids the delivery claims (the body is read a second time for
    /// them only when it was refused, and only if it is not too large to read).
    fn refused(&self, d: Inbound<'_>, rejected: Rejected) -> Refused {
        let (message_id, claimed_sender) = if d.body.len() <= self.limits.max_body_bytes {
            envelope::best_effort_ids(d.body, d.meta)
        } else {
            (d.meta.message_id.clone(), d.meta.app_id.clone())
        };
        Refused {
            rejected,
            message_id: message_id.filter(|id| !id.contains('\0')),
            claimed_sender: claimed_sender.filter(|s| !s.contains('\0')),
        }
    }

    /// Check 6: the payload fields stored in columns fit: the texts
    /// (`limits.max_text_bytes`) and every loaded definition's business key
    /// (`limits.max_key_bytes`), whatever the message, so that no message can make an
    /// index refuse its batch.
    pub fn check_stored(&self, env: &Envelope) -> Result<(), Rejected> {
        let data = &env.payload.data;
        let keys = self
            .workflows
            .key_fields()
            .map(|f| (f, self.limits.max_key_bytes));
        let texts = envelope::STORED_TEXTS
            .iter()
            .map(|f| (*f, self.limits.max_text_bytes));
        for (field, max) in keys.chain(texts) {
            if let Some(s) = data.get(field).and_then(Value::as_str) {
                if s.len() > max {
                    return Err(Rejected::new(
                        Reason::TooLarge,
                        format!(
                            "payload.data.{field} is {} bytes; at most {max} are allowed",
                            s.len()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Why a sender's signature does not stand, naming the keys registered for it.
fn signature_refusal(e: SignatureError, agent: &str, keys: &Agents) -> Rejected {
    match e {
        SignatureError::Missing => Rejected::new(
            Reason::MissingSignature,
            "header.security.signature is missing and signatures are checked (docs/agents.md shows how to sign)",
        ),
        e => {
            let registered = keys.keys_of(agent);
            Rejected::new(
                Reason::BadSignature,
                format!(
                    "{e}; keys registered for {agent}: {}",
                    if registered.is_empty() {
                        "none (coordinator agent add --public-key)".to_string()
                    } else {
                        registered
                            .iter()
                            .map(|(id, _)| id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            )
        }
    }
}
