//! Envelope signatures (docs/security.md): Ed25519 over the envelope's signed form,
//! which is the envelope as sent, a JSON object, with `header.security.signature`
//! removed (everything else, `header.security.key_id` included, stays), written in the
//! JSON Canonicalization Scheme (RFC 8785, through `serde_json_canonicalizer`): what
//! every language's JCS library writes for the same value, floats included. The signature goes in `header.security.signature`
//! (standard base64 of its 64 bytes), the signing key's name in
//! `header.security.key_id`. Keys are written as standard base64 of their 32 raw bytes
//! (a public key; a private key's seed).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer as _, Verifier as _};
use serde_json::{Map, Value};

pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// Why a signature does not stand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("header.security.signature is missing")]
    Missing,
    #[error("header.security.key_id is missing or names no key of the sender ({0:?})")]
    UnknownKey(String),
    #[error("header.security.signature is not base64 of 64 bytes")]
    Malformed,
    #[error("header.security.signature does not verify with key {0:?}")]
    Mismatch(String),
}

/// The bytes a signature covers.
pub fn signed_form(envelope: &Value) -> Vec<u8> {
    let mut unsigned = envelope.clone();
    take_signature(&mut unsigned);
    jcs(&unsigned)
}

/// Removes `header.security.signature` from `envelope` and returns it.
fn take_signature(envelope: &mut Value) -> Option<Value> {
    envelope
        .get_mut("header")
        .and_then(|h| h.get_mut("security"))
        .and_then(Value::as_object_mut)
        .and_then(|security| security.remove("signature"))
}

/// `value` in the JSON Canonicalization Scheme (RFC 8785). Only a NaN or an infinity
/// cannot be written, and a parsed JSON value holds neither.
///
/// `serde_json_canonicalizer` is the reference, and writes every value whose compact
/// JSON is not already canonical (see [`written_canonically`]). It costs about 7 µs an
/// envelope on the machine the benchmarks run on, against 0.5 µs for serde_json's own
/// writer, on every message signed or verified at both ends; a property test
/// (`tests/jcs.rs`) holds the two to the same bytes.
pub fn jcs(value: &Value) -> Vec<u8> {
    if written_canonically(value) {
        return serde_json::to_vec(value).unwrap_or_default();
    }
    serde_json_canonicalizer::to_vec(value).unwrap_or_default()
}

/// Whether serde_json's compact writing of `value` is its RFC 8785 form already: every
/// number an integer of magnitude at most 2^53 (which an IEEE double holds exactly and
/// ECMAScript writes as the same digits), and every object's members iterated in
/// ascending order of their keys' UTF-16 code units (for keys without a character from
/// U+E000 up, that is their UTF-8 byte order). Strings are escaped alike by both:
/// `\"`, `\\`, `\b \f \n \r \t`, other control characters as `\u00xx`, nothing else.
pub fn written_canonically(value: &Value) -> bool {
    const EXACT: u64 = 1 << 53;
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => true,
        Value::Number(n) => {
            n.as_u64().is_some_and(|u| u <= EXACT)
                || n.as_i64().is_some_and(|i| i.unsigned_abs() <= EXACT)
        }
        Value::Array(items) => items.iter().all(written_canonically),
        Value::Object(members) => {
            let mut previous: Option<&str> = None;
            members.iter().all(|(key, v)| {
                let in_order = previous.is_none_or(|p| p < key.as_str())
                    && !key.chars().any(|c| c >= '\u{E000}');
                previous = Some(key);
                in_order && written_canonically(v)
            })
        }
    }
}

/// Signs `envelope` in place: sets `header.security.key_id`, then the signature over
/// the signed form.
pub fn sign(envelope: &mut Value, key: &SigningKey, key_id: &str) {
    let Some(header) = envelope.get_mut("header").and_then(Value::as_object_mut) else {
        return;
    };
    let security = header
        .entry("security")
        .or_insert_with(|| Value::Object(Map::new()));
    if !security.is_object() {
        *security = Value::Object(Map::new());
    }
    if let Some(s) = security.as_object_mut() {
        s.insert("key_id".into(), Value::String(key_id.to_string()));
    }
    // Signed in place: the signature it replaces is no part of the signed form.
    take_signature(envelope);
    let signature = key.sign(&jcs(envelope));
    if let Some(s) = envelope
        .pointer_mut("/header/security")
        .and_then(Value::as_object_mut)
    {
        s.insert(
            "signature".into(),
            Value::String(B64.encode(signature.to_bytes())),
        );
    }
}

/// The key id and signature an envelope carries.
pub fn carried(envelope: &Value) -> Result<(String, Signature), SignatureError> {
    let security = envelope.pointer("/header/security");
    let Some(sig) = security
        .and_then(|s| s.get("signature"))
        .and_then(Value::as_str)
    else {
        return Err(SignatureError::Missing);
    };
    let key_id = security
        .and_then(|s| s.get("key_id"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let bytes = B64.decode(sig).map_err(|_| SignatureError::Malformed)?;
    let bytes: [u8; 64] = bytes.try_into().map_err(|_| SignatureError::Malformed)?;
    Ok((key_id, Signature::from_bytes(&bytes)))
}

/// Checks `envelope`'s signature with the key its `key_id` names among `keys`.
pub fn verify<'k>(
    envelope: &Value,
    keys: impl IntoIterator<Item = (&'k str, &'k VerifyingKey)>,
) -> Result<String, SignatureError> {
    prepare(envelope.clone(), keys)?.verify()
}

/// A signature ready to verify: the bytes it covers, the signature, and the sender's
/// key its `key_id` names.
#[derive(Debug, Clone)]
pub struct Pending {
    form: Vec<u8>,
    signature: Signature,
    key: VerifyingKey,
    key_id: String,
}

/// Everything [`verify`] does before the verification itself: an envelope without a
/// signature, with a malformed one, or naming no key of `keys` fails here. Takes the
/// envelope to write its signed form without copying it.
pub fn prepare<'k>(
    mut envelope: Value,
    keys: impl IntoIterator<Item = (&'k str, &'k VerifyingKey)>,
) -> Result<Pending, SignatureError> {
    let (key_id, signature) = carried(&envelope)?;
    let Some((_, key)) = keys.into_iter().find(|(id, _)| *id == key_id) else {
        return Err(SignatureError::UnknownKey(key_id));
    };
    take_signature(&mut envelope);
    Ok(Pending {
        form: jcs(&envelope),
        signature,
        key: *key,
        key_id,
    })
}

impl Pending {
    /// This one signature, on its own.
    pub fn verify(&self) -> Result<String, SignatureError> {
        self.key
            .verify(&self.form, &self.signature)
            .map_err(|_| SignatureError::Mismatch(self.key_id.clone()))?;
        Ok(self.key_id.clone())
    }
}

/// Each of `pending` verified, in order, as [`Pending::verify`] would. Two or more are
/// first checked together with Ed25519 batch verification, which costs about half as
/// much a signature for a batch of eight; only when that fails (some signature in it is
/// bad) is each checked on its own, to say which. The batch equation is the
/// cofactored one, so a signature built with small-order points (which only the key's
/// holder can make) may pass in a batch and fail on its own; it cannot be forged
/// without the key either way.
pub fn verify_all(pending: &[&Pending]) -> Vec<Result<String, SignatureError>> {
    if pending.len() >= 2 {
        let forms: Vec<&[u8]> = pending.iter().map(|p| p.form.as_slice()).collect();
        let signatures: Vec<Signature> = pending.iter().map(|p| p.signature).collect();
        let keys: Vec<VerifyingKey> = pending.iter().map(|p| p.key).collect();
        if ed25519_dalek::verify_batch(&forms, &signatures, &keys).is_ok() {
            return pending.iter().map(|p| Ok(p.key_id.clone())).collect();
        }
    }
    pending.iter().map(|p| p.verify()).collect()
}

/// A public key from standard base64 of its 32 bytes.
pub fn public_key(b64: &str) -> Result<VerifyingKey, String> {
    let bytes = B64
        .decode(b64.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("an Ed25519 public key is 32 bytes, this is {}", b.len()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// A private key from standard base64 of its 32-byte seed.
pub fn signing_key(b64: &str) -> Result<SigningKey, String> {
    let bytes = B64
        .decode(b64.trim())
        .map_err(|_| "not base64".to_string())?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "an Ed25519 private key (seed) is 32 bytes, this is {}",
            b.len()
        )
    })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// A key as standard base64 of its 32 bytes.
pub fn encode_public(key: &VerifyingKey) -> String {
    B64.encode(key.to_bytes())
}

/// A private key's seed as standard base64.
pub fn encode_private(key: &SigningKey) -> String {
    B64.encode(key.to_bytes())
}

/// A sender's key and its name: signs whole message bodies.
pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl Signer {
    pub fn new(key: SigningKey, key_id: impl Into<String>) -> Signer {
        Signer {
            key,
            key_id: key_id.into(),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// `body` (an envelope's JSON) signed; `None` if it is not a JSON object.
    pub fn sign_body(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut value: Value = serde_json::from_slice(body).ok()?;
        if !value.is_object() {
            return None;
        }
        sign(&mut value, &self.key, &self.key_id);
        serde_json::to_vec(&value).ok()
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .field("public_key", &encode_public(&self.public_key()))
            .finish_non_exhaustive()
    }
}

/// A key's default name: `ed25519-` and the first 8 bytes of the public key in hex.
pub fn default_key_id(key: &VerifyingKey) -> String {
    let hex: String = key.to_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("ed25519-{hex}")
}

/// A new private key from the operating system's randomness.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope() -> Value {
        json!({
            "header": {"message_id": "m-1", "message_type": "testing_started", "version": "1.3",
                        "source": {"agent_id": "qa-1", "agent_type": "qa-director"}},
            "payload": {"data": {"coverage": 87.5, "note": "é\n"}, "metadata": {}}
        })
    }

    #[test]
    fn a_signed_envelope_verifies_with_its_key_and_names_it() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut env = envelope();
        sign(&mut env, &key, "qa-1-2026");
        assert_eq!(env["header"]["security"]["key_id"], "qa-1-2026");
        let public = key.verifying_key();
        assert_eq!(
            verify(&env, [("qa-1-2026", &public)]),
            Ok("qa-1-2026".into())
        );
    }

    #[test]
    fn a_changed_field_or_another_key_fails() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        let mut env = envelope();
        sign(&mut env, &key, "k1");
        let public = key.verifying_key();
        let mut changed = env.clone();
        changed["payload"]["data"]["coverage"] = json!(99.5);
        assert_eq!(
            verify(&changed, [("k1", &public)]),
            Err(SignatureError::Mismatch("k1".into()))
        );
        assert_eq!(
            verify(&env, [("k1", &other)]),
            Err(SignatureError::Mismatch("k1".into()))
        );
        assert_eq!(
            verify(&env, [("k0", &public)]),
            Err(SignatureError::UnknownKey("k1".into()))
        );
        assert_eq!(
            verify(&envelope(), [("k1", &public)]),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn a_batch_says_which_signature_is_bad_and_passes_the_good_ones() {
        let keys: Vec<SigningKey> = (1..=4).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
        let publics: Vec<VerifyingKey> = keys.iter().map(SigningKey::verifying_key).collect();
        let signed: Vec<Value> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let mut env = envelope();
                env["header"]["message_id"] = json!(format!("m-{i}"));
                sign(&mut env, k, &format!("k{i}"));
                env
            })
            .collect();
        let pending = |envs: &[Value]| -> Vec<Pending> {
            envs.iter()
                .enumerate()
                .map(|(i, e)| {
                    prepare(e.clone(), [(format!("k{i}").as_str(), &publics[i])]).unwrap()
                })
                .collect()
        };
        let refs = |p: &[Pending]| -> Vec<Result<String, SignatureError>> {
            verify_all(&p.iter().collect::<Vec<_>>())
        };
        let all_good = refs(&pending(&signed));
        assert_eq!(
            all_good,
            (0..4).map(|i| Ok(format!("k{i}"))).collect::<Vec<_>>()
        );
        let mut tampered = signed.clone();
        tampered[2]["payload"]["data"]["coverage"] = json!(1.0);
        let results = refs(&pending(&tampered));
        assert_eq!(results[2], Err(SignatureError::Mismatch("k2".into())));
        assert!(results[0].is_ok() && results[1].is_ok() && results[3].is_ok());
        let alone = prepare(tampered[2].clone(), [("k2", &publics[2])]).unwrap();
        assert_eq!(
            verify_all(&[&alone]),
            vec![Err(SignatureError::Mismatch("k2".into()))]
        );
    }

    #[test]
    fn member_order_and_spacing_do_not_matter() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut env = envelope();
        sign(&mut env, &key, "k1");
        let respaced: Value =
            serde_json::from_str(&serde_json::to_string_pretty(&env).unwrap()).unwrap();
        assert!(verify(&respaced, [("k1", &key.verifying_key())]).is_ok());
    }

    #[test]
    fn the_signed_form_is_the_documented_one() {
        // RFC 8032's first test key: anyone can check this example by hand.
        let key = signing_key("nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=").unwrap();
        assert_eq!(
            encode_public(&key.verifying_key()),
            "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
        );
        let mut env = json!({"header": {"b": 1, "a": "x"}, "payload": {}});
        sign(&mut env, &key, "k");
        assert_eq!(
            String::from_utf8(signed_form(&env)).unwrap(),
            r#"{"header":{"a":"x","b":1,"security":{"key_id":"k"}},"payload":{}}"#
        );
    }

    #[test]
    fn keys_round_trip_through_base64_and_bad_ones_are_named() {
        let key = generate();
        let public = encode_public(&key.verifying_key());
        assert_eq!(public_key(&public).unwrap(), key.verifying_key());
        assert_eq!(
            signing_key(&encode_private(&key)).unwrap().to_bytes(),
            key.to_bytes()
        );
        assert!(public_key("AAAA").unwrap_err().contains("32 bytes"));
        assert!(public_key("not base64!").unwrap_err().contains("base64"));
    }
}
