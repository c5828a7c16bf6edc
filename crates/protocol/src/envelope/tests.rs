use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::catalog::RoleSpec;

fn catalog() -> Catalog {
    let mut roles = BTreeMap::new();
    roles.insert(
        "qa-director".to_string(),
        RoleSpec {
            publishes: vec!["testing_started".into(), "bug_discovered".into()],
            subscribes_to: vec![],
        },
    );
    roles.insert(
        "engineering-director".to_string(),
        RoleSpec {
            publishes: vec!["feature_completed".into()],
            subscribes_to: vec![],
        },
    );
    Catalog::new(roles, ["heartbeat".to_string()])
}

fn now() -> DateTime<Utc> {
    "2026-01-15T10:30:10Z".parse().expect("valid time")
}

fn good() -> serde_json::Value {
    json!({
        "header": {
            "message_id": "m-1",
            "correlation_id": "wf-1",
            "timestamp": "2026-01-15T10:30:00Z",
            "version": "1.0",
            "source": {"agent_id": "qa-1", "agent_type": "qa-director"},
            "message_type": "testing_started",
            "ttl": 60
        },
        "payload": {"data": {"feature_id": "F-1"}, "metadata": {}}
    })
}

fn meta_for(v: &serde_json::Value) -> DeliveryMeta {
    let env: Envelope = serde_json::from_value(v.clone()).expect("good envelope");
    env.meta(&env.agent_routing_key())
}

fn check(v: &serde_json::Value, meta: &DeliveryMeta) -> Result<Envelope, Rejected> {
    validate(v.to_string().as_bytes(), meta, &catalog(), now())
}

fn reason(r: Result<Envelope, Rejected>) -> Reason {
    r.expect_err("must be rejected").reason
}

#[test]
fn a_good_envelope_validates() {
    let v = good();
    let env = check(&v, &meta_for(&v)).expect("valid");
    assert_eq!(env.header.message_id, "m-1");
    assert_eq!(env.payload.data["feature_id"], "F-1");
    assert_eq!(env.header.priority, None, "absent means normal");
}

#[test]
fn not_json_is_malformed() {
    let meta = meta_for(&good());
    for body in [&b"not json"[..], b"", b"{\"header\":", &[0xff, 0xfe, 0x00]] {
        assert_eq!(
            validate(body, &meta, &catalog(), now())
                .expect_err("rejected")
                .reason,
            Reason::MalformedJson
        );
    }
}

#[test]
fn each_required_field_missing_or_empty_is_named() {
    for (path, field) in [
        (&["header"][..], "message_id"),
        (&["header"][..], "correlation_id"),
        (&["header"][..], "timestamp"),
        (&["header"][..], "message_type"),
        (&["header"][..], "source"),
        (&["header", "source"][..], "agent_id"),
        (&[][..], "header"),
    ] {
        let mut v = good();
        let meta = meta_for(&v);
        let mut obj = &mut v;
        for p in path {
            obj = &mut obj[*p];
        }
        obj.as_object_mut().expect("object").remove(field);
        let err = check(&v, &meta).expect_err("missing field rejected");
        assert_eq!(err.reason, Reason::MissingField, "{field}: {err}");
        assert!(
            err.detail.contains(field),
            "detail names the field: {}",
            err.detail
        );
    }
    let mut v = good();
    let meta = meta_for(&v);
    v["header"]["correlation_id"] = json!("  ");
    let err = check(&v, &meta).expect_err("empty rejected");
    assert_eq!(err.reason, Reason::MissingField);
    assert!(err.detail.contains("header.correlation_id"));
}

#[test]
fn wrong_types_and_values_are_invalid_fields_with_their_path() {
    for (field, value) in [
        ("timestamp", json!("yesterday")),
        ("ttl", json!(-5)),
        ("priority", json!("urgent")),
        ("message_id", json!(42)),
    ] {
        let mut v = good();
        let meta = meta_for(&v);
        v["header"][field] = value;
        let err = check(&v, &meta).expect_err("rejected");
        assert_eq!(err.reason, Reason::InvalidField, "{field}: {err}");
        assert!(err.detail.contains(field), "{}", err.detail);
    }
    let mut v = good();
    let meta = meta_for(&v);
    v["header"]["message_type"] = json!("testing.started");
    assert_eq!(reason(check(&v, &meta)), Reason::InvalidField);
}

#[test]
fn versions_of_the_supported_major_are_read_and_others_rejected() {
    // MAJOR.MINOR, or MAJOR.MINOR.PATCH as the source documents write it.
    for ok in ["1.0", "1.7", "1.10", "1.0.0", "1.1.3"] {
        let mut v = good();
        v["header"]["version"] = json!(ok);
        assert!(check(&v, &meta_for(&v)).is_ok(), "{ok}");
    }
    // Absent means the version this coordinator writes.
    let mut v = good();
    v["header"]
        .as_object_mut()
        .expect("header")
        .remove("version");
    assert!(check(&v, &meta_for(&v)).is_ok());
    for bad in [
        "2.0", "0.9", "1", "1.x", "v1.0", "", "1.0.0.0", "2.0.0", "1..0", "one",
    ] {
        let mut v = good();
        v["header"]["version"] = json!(bad);
        let rej = check(&v, &meta_for(&v)).expect_err(bad);
        assert_eq!(rej.reason, Reason::UnsupportedVersion, "{bad}");
        assert!(rej.detail.contains("1.x"), "{}", rej.detail);
    }
}

#[test]
fn properties_must_repeat_the_header() {
    let v = good();
    let base = meta_for(&v);
    let cases: Vec<(&str, DeliveryMeta)> = vec![
        (
            "message_id",
            DeliveryMeta {
                message_id: Some("other".into()),
                ..base.clone()
            },
        ),
        (
            "message_id",
            DeliveryMeta {
                message_id: None,
                ..base.clone()
            },
        ),
        (
            "correlation_id",
            DeliveryMeta {
                correlation_id: Some("wf-2".into()),
                ..base.clone()
            },
        ),
        (
            "type",
            DeliveryMeta {
                kind: Some("bug_discovered".into()),
                ..base.clone()
            },
        ),
        (
            "app_id",
            DeliveryMeta {
                app_id: Some("qa-2".into()),
                ..base.clone()
            },
        ),
        (
            "timestamp",
            DeliveryMeta {
                timestamp: Some(1),
                ..base.clone()
            },
        ),
        (
            "content_type",
            DeliveryMeta {
                content_type: Some("text/plain".into()),
                ..base.clone()
            },
        ),
        (
            "routing key",
            DeliveryMeta {
                routing_key: "qa-director.bug_discovered".into(),
                ..base.clone()
            },
        ),
    ];
    for (what, meta) in cases {
        let err = check(&v, &meta).expect_err("mismatch rejected");
        assert_eq!(err.reason, Reason::PropertyMismatch, "{what}: {err}");
        assert!(err.detail.contains(what), "{what}: {}", err.detail);
    }
    // The timestamp property is optional and whole seconds.
    let mut v = good();
    v["header"]["timestamp"] = json!("2026-01-15T10:30:00.900Z");
    let meta = DeliveryMeta {
        timestamp: Some(1_768_473_000),
        ..base.clone()
    };
    check(&v, &meta).expect("fractional seconds agree to the second");
    check(
        &good(),
        &DeliveryMeta {
            timestamp: None,
            ..base
        },
    )
    .expect("timestamp property optional");
}

#[test]
fn unknown_roles_types_and_forbidden_senders_are_rejected() {
    let mut v = good();
    v["header"]["source"]["agent_type"] = json!("intern");
    assert_eq!(reason(check(&v, &meta_for(&v))), Reason::UnknownRole);

    let mut v = good();
    v["header"]["message_type"] = json!("launch_rockets");
    assert_eq!(reason(check(&v, &meta_for(&v))), Reason::UnknownMessageType);

    let mut v = good();
    v["header"]["message_type"] = json!("feature_completed");
    assert_eq!(reason(check(&v, &meta_for(&v))), Reason::SenderNotAllowed);

    let mut v = good();
    v["header"]["message_type"] = json!("heartbeat");
    check(&v, &meta_for(&v)).expect("every role may send a heartbeat");
}

#[test]
fn expired_messages_are_rejected_and_no_ttl_never_expires() {
    let mut v = good();
    v["header"]["ttl"] = json!(5);
    assert_eq!(reason(check(&v, &meta_for(&v))), Reason::Expired);
    v["header"]["ttl"] = json!(10);
    check(&v, &meta_for(&v)).expect("expires exactly now: still fresh");
    v["header"].as_object_mut().expect("object").remove("ttl");
    check(&v, &meta_for(&v)).expect("no ttl");
    v["header"]["ttl"] = json!(u64::MAX);
    check(&v, &meta_for(&v)).expect("huge ttl does not overflow");
}

#[test]
fn best_effort_ids_fall_back_to_properties() {
    let meta = DeliveryMeta {
        message_id: Some("prop-id".into()),
        app_id: Some("prop-agent".into()),
        ..Default::default()
    };
    assert_eq!(
        best_effort_ids(b"garbage", &meta),
        (Some("prop-id".into()), Some("prop-agent".into()))
    );
    let v = good();
    assert_eq!(
        best_effort_ids(v.to_string().as_bytes(), &meta),
        (Some("m-1".into()), Some("qa-1".into()))
    );
}

#[test]
fn outgoing_envelopes_round_trip() {
    let env = Envelope::from_coordinator(
        "id".into(),
        "wf".into(),
        Some("cause".into()),
        "feature_handoff",
        Some(Destination {
            agent_type: Some("qa-director".into()),
            ..Default::default()
        }),
        Payload::default(),
        now(),
    );
    let bytes = serde_json::to_vec(&env).expect("serializes");
    assert_eq!(parse(&bytes).expect("parses"), env);
}

fn mutate(v: &mut serde_json::Value, choice: u8, salt: &str) {
    let keys = [
        "message_id",
        "correlation_id",
        "timestamp",
        "message_type",
        "source",
        "ttl",
        "priority",
    ];
    let key = keys[usize::from(choice) % keys.len()];
    let header = &mut v["header"];
    match choice % 5 {
        0 => {
            header.as_object_mut().map(|h| h.remove(key));
        }
        1 => header[key] = json!(salt),
        2 => header[key] = json!(salt.len()),
        3 => header[key] = json!(null),
        _ => header[key] = json!([salt, {"x": salt}]),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let meta = meta_for(&good());
        let _ = validate(&body, &meta, &catalog(), now());
        let _ = best_effort_ids(&body, &meta);
    }

    #[test]
    fn parsed_straight_or_through_a_value_the_verdict_is_the_same(
        mutations in proptest::collection::vec((any::<u8>(), "\\PC{0,300}"), 0..4)
    ) {
        let mut v = good();
        for (choice, salt) in &mutations {
            mutate(&mut v, *choice, salt);
        }
        let body = v.to_string();
        let straight = parse(body.as_bytes());
        let through = parse_value(body.as_bytes()).and_then(|v| from_value(&v));
        match (straight, through) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(a.reason, b.reason, "{} / {}", a.detail, b.detail),
            (a, b) => prop_assert!(false, "{a:?} but {b:?}"),
        }
    }

    #[test]
    fn mutated_envelopes_never_panic_and_are_rejected_with_a_reason(
        mutations in proptest::collection::vec((any::<u8>(), "\\PC{0,300}"), 1..4)
    ) {
        let mut v = good();
        let meta = meta_for(&v);
        for (choice, salt) in &mutations {
            mutate(&mut v, *choice, salt);
        }
        match check(&v, &meta) {
            Ok(env) => prop_assert_eq!(env.header.message_id, "m-1"),
            Err(e) => prop_assert!(!e.detail.is_empty()),
        }
    }
}

/// An envelope written the source documents' way nests priority and ttl in
/// `header.routing`: they are read, never ignored.
#[test]
fn the_source_documents_routing_block_is_read_as_the_headers_own() {
    let mut v = good();
    let h = v["header"].as_object_mut().expect("header");
    h.remove("ttl");
    h.insert("version".into(), json!("1.0.0"));
    h.insert(
        "routing".into(),
        json!({"priority": "high", "ttl": 60, "retry_count": 0, "max_retries": 3}),
    );
    let meta = meta_for(&v);
    let env = check(&v, &meta).expect("valid");
    assert_eq!(env.header.priority, Some(Priority::High));
    assert_eq!(env.header.ttl, Some(60));
    let r = env.header.routing.as_ref().expect("routing carried");
    assert_eq!((r.retry_count, r.max_retries), (Some(0), Some(3)));
    // Its ttl counts: an hour later the message has expired.
    let later = now() + chrono::Duration::hours(1);
    let rej = validate(v.to_string().as_bytes(), &meta, &catalog(), later).expect_err("expired");
    assert_eq!(rej.reason, Reason::Expired, "{}", rej.detail);

    // Given twice, they must agree; the refusal names both fields.
    for (flat, nested, field) in [
        (
            ("priority", json!("low")),
            ("priority", json!("high")),
            "header.routing.priority",
        ),
        (("ttl", json!(30)), ("ttl", json!(60)), "header.routing.ttl"),
    ] {
        let mut v = good();
        v["header"][flat.0] = flat.1;
        v["header"]["routing"] = json!({ nested.0: nested.1 });
        let rej = check(&v, &meta_for(&v)).expect_err("disagree");
        assert_eq!(rej.reason, Reason::InvalidField);
        assert!(rej.detail.contains(field), "{}", rej.detail);
    }
    // The same value twice is fine.
    let mut v = good();
    v["header"]["routing"] = json!({"ttl": 60});
    assert_eq!(check(&v, &meta_for(&v)).expect("same").header.ttl, Some(60));
}

#[test]
fn a_timestamp_outside_the_window_is_stale_or_from_the_future() {
    let env: Envelope = serde_json::from_value(good()).expect("envelope");
    let t = env.header.timestamp;
    let w = Window::default();
    check_window(&env, t, &w).expect("now is fresh");
    check_window(&env, t + chrono::Duration::minutes(5), &w).expect("5 min old is still fresh");
    let stale = check_window(&env, t + chrono::Duration::minutes(6), &w).expect_err("stale");
    assert_eq!(stale.reason, Reason::Stale);
    assert!(stale.detail.contains("360 s old"), "{}", stale.detail);
    check_window(&env, t - chrono::Duration::seconds(60), &w).expect("a minute ahead is allowed");
    let ahead = check_window(&env, t - chrono::Duration::minutes(2), &w).expect_err("future");
    assert_eq!(ahead.reason, Reason::FromTheFuture);
    assert!(ahead.detail.contains("NTP"), "{}", ahead.detail);
}

#[test]
fn sender_authentication_wants_the_user_id_property_to_be_the_agent_id() {
    let v = good();
    let env: Envelope = serde_json::from_value(v.clone()).expect("envelope");
    let mut meta = meta_for(&v);
    let none = check_sender(&env, &meta).expect_err("no user_id");
    assert_eq!(none.reason, Reason::Unauthenticated);
    assert!(none.detail.contains("no AMQP user_id"), "{}", none.detail);
    meta.user_id = Some("eng-1".into());
    let other = check_sender(&env, &meta).expect_err("another user");
    assert_eq!(other.reason, Reason::Unauthenticated);
    assert!(other.detail.contains("\"eng-1\""), "{}", other.detail);
    meta.user_id = Some(env.header.source.agent_id.clone());
    check_sender(&env, &meta).expect("its own user");
}
