//! The signed form is RFC 8785 (JSON Canonicalization Scheme): checked against the
//! RFC's own examples. Appendix B's number serializations (an IEEE 754 double, in hex,
//! and the only string JCS may write for it), section 3.2.2's sample value, and section
//! 3.2.3's member sorting (by UTF-16 code units, which is not UTF-8 byte order).

use protocol::signing::{self, jcs, SigningKey};
use serde_json::{json, Value};

fn canonical(value: &Value) -> String {
    String::from_utf8(jcs(value)).expect("JCS writes UTF-8")
}

/// RFC 8785, Appendix B: "Number Serialization Samples".
const APPENDIX_B: &[(u64, &str)] = &[
    (0x0000000000000000, "0"),
    (0x8000000000000000, "0"),
    (0x0000000000000001, "5e-324"),
    (0x8000000000000001, "-5e-324"),
    (0x7fefffffffffffff, "1.7976931348623157e+308"),
    (0xffefffffffffffff, "-1.7976931348623157e+308"),
    (0x4340000000000000, "9007199254740992"),
    (0xc340000000000000, "-9007199254740992"),
    (0x4430000000000000, "295147905179352830000"),
    (0x44b52d02c7e14af5, "9.999999999999997e+22"),
    (0x44b52d02c7e14af6, "1e+23"),
    (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
    (0x444b1ae4d6e2ef4e, "999999999999999700000"),
    (0x444b1ae4d6e2ef4f, "999999999999999900000"),
    (0x444b1ae4d6e2ef50, "1e+21"),
    (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
    (0x3eb0c6f7a0b5ed8d, "0.000001"),
    (0x41b3de4355555553, "333333333.3333332"),
    (0x41b3de4355555554, "333333333.33333325"),
    (0x41b3de4355555555, "333333333.3333333"),
    (0x41b3de4355555556, "333333333.3333334"),
    (0x41b3de4355555557, "333333333.33333343"),
    (0xbecbf647612f3696, "-0.0000033333333333333333"),
    (0x43143ff3c1cb0959, "1424953923781206.2"),
];

#[test]
fn numbers_are_written_as_appendix_b_says() {
    for (bits, expected) in APPENDIX_B {
        let n = f64::from_bits(*bits);
        let value = serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number);
        assert_eq!(canonical(&value), *expected, "{bits:016x} ({n:e})");
    }
}

#[test]
fn section_3_2_2s_sample_is_written_as_the_rfc_shows() {
    // The sample's input, as JSON text: numbers in several notations, escapes of every
    // kind, literals.
    let input = r#"{
        "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
        "literals": [null, true, false]
    }"#;
    let value: Value = serde_json::from_str(input).expect("the RFC's sample parses");
    assert_eq!(
        canonical(&value),
        r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
    );
}

#[test]
fn members_are_sorted_by_utf16_code_units_as_section_3_2_3_shows() {
    let input = r#"{
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\ud83d\ude00": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis"
    }"#;
    let value: Value = serde_json::from_str(input).expect("the RFC's sample parses");
    // The emoji (a surrogate pair in UTF-16) sorts before U+FB33, though its UTF-8 bytes
    // sort after.
    assert_eq!(
        canonical(&value),
        "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
         \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
         \"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
    );
}

#[test]
fn a_signature_covers_floats_as_every_jcs_library_writes_them() {
    let key = SigningKey::from_bytes(&[9; 32]);
    let mut env = json!({
        "header": {"message_id": "m-1", "source": {"agent_id": "qa-1"}},
        "payload": {"data": {"small": 1e-7, "big": 1e21, "tenth": 0.1, "minus_zero": -0.0,
                             "größe": 3, "名前": "x"}}
    });
    signing::sign(&mut env, &key, "k");
    let form = String::from_utf8(signing::signed_form(&env)).expect("utf-8");
    assert!(
        form.contains(r#""big":1e+21"#)
            && form.contains(r#""minus_zero":0"#)
            && form.contains(r#""small":1e-7"#)
            && form.contains(r#""tenth":0.1"#),
        "{form}"
    );
    // Sent as any agent's JSON library writes it (here with the floats spelled out),
    // parsed back, it still verifies.
    let text = serde_json::to_string_pretty(&env)
        .expect("json")
        .replace("1e21", "1000000000000000000000.0");
    let received: Value = serde_json::from_str(&text).expect("parses");
    assert_eq!(
        signing::verify(&received, [("k", &key.verifying_key())]),
        Ok("k".to_string())
    );
}

/// Any JSON value: integers around 2^53, floats, keys and strings with escapes,
/// characters either side of U+E000 and above U+FFFF, nested objects and arrays.
fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let text = "[a-zA-Z0-9 \"\\\\/\\x00-\\x1f\\x7f\u{e9}\u{2028}\u{d7ff}\u{e000}\u{fb33}\u{ffff}\u{10000}\u{1f600}]{0,6}";
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-(1i64 << 54)..(1i64 << 54)).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text.prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(text, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// The fast path (serde_json's own writer, for values it already writes
    /// canonically) and the reference library agree on every value.
    #[test]
    fn the_fast_path_writes_what_the_reference_library_writes(value in any_value()) {
        let reference = serde_json_canonicalizer::to_vec(&value).expect("a JSON value");
        let ours = jcs(&value);
        proptest::prop_assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&reference)
        );
    }
}

/// The fast path is taken for what agents send most (integers, strings), and not for a
/// float, a large integer or a key from U+E000 up.
#[test]
fn only_values_serde_json_writes_canonically_take_the_fast_path() {
    assert!(signing::written_canonically(
        &json!({"a": [1, -9007199254740992i64, "x\u{1f600}"], "b": null})
    ));
    assert!(!signing::written_canonically(&json!({"a": 0.5})));
    assert!(!signing::written_canonically(
        &json!({"a": 9007199254740993u64})
    ));
    assert!(!signing::written_canonically(&json!({"\u{e000}": 1})));
}
