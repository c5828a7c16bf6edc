//! Sensitive payload fields, stored encrypted (docs/security.md, "Encrypted fields"):
//! AES-256-GCM over each configured field's JSON value, with a fresh 96-bit nonce, the
//! field's path as associated data, and the key's id beside the ciphertext so that keys
//! can rotate (the current key seals, every listed key opens). A sealed value is the
//! JSON object
//!
//! ```json
//! {"$encrypted": {"alg": "A256GCM", "kid": "aes-1a2b3c4d5e6f7a8b",
//!                 "field": "payload.data.customer.email",
//!                 "iv": "<base64, 12 bytes>", "ct": "<base64: ciphertext and tag>"}}
//! ```
//!
//! in place of the value, so SQL sees which field is sealed and with which key, and
//! nothing of the value. No I/O; the pipeline seals rows before it writes them, the CLI
//! and a dead letter's replay open them.

use std::collections::HashMap;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::engine::rows::{NewDeadLetter, Writes};

/// The member that marks a sealed value.
pub const SEALED: &str = "$encrypted";
const ALG: &str = "A256GCM";
/// What every configured path starts with: only payload data is sealed (the header
/// routes the message and must stay readable).
pub const DATA_PREFIX: &str = "payload.data.";

/// Why a sealed value could not be opened, or a key not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    #[error(
        "not a base64 AES-256 key of 32 bytes (coordinator key generate-encryption makes one)"
    )]
    BadKey,
    #[error("{field} is sealed with key {kid}, which is not configured (security.encryption.key or previous_keys)")]
    UnknownKey { field: String, kid: String },
    #[error("{field} does not decrypt with key {kid}: the value was altered, or the key is not the one it was sealed with")]
    Tampered { field: String, kid: String },
    #[error("a sealed value is malformed: {0}")]
    Malformed(String),
}

/// A key and the id rows name it by.
#[derive(Clone)]
struct Key {
    id: String,
    cipher: Aes256Gcm,
}

/// The id of a key: a digest of it, so that ids never disagree with keys.
pub fn key_id(key: &[u8]) -> String {
    let digest = Sha256::digest(key);
    format!("aes-{}", hex::encode(&digest[..8]))
}

fn parse_key(b64: &str) -> Result<Key, CipherError> {
    let bytes = B64.decode(b64.trim()).map_err(|_| CipherError::BadKey)?;
    if bytes.len() != 32 {
        return Err(CipherError::BadKey);
    }
    let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| CipherError::BadKey)?;
    Ok(Key {
        id: key_id(&bytes),
        cipher,
    })
}

/// A new key from the operating system's randomness, base64, and its id.
pub fn generate() -> (String, String) {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    (B64.encode(bytes), key_id(&bytes))
}

/// Seals and opens the configured fields.
#[derive(Clone, Default)]
pub struct FieldCipher {
    /// Paths under `payload.data`, split at dots.
    fields: Vec<Vec<String>>,
    /// Seals (and opens); `None`: this process can only open with `previous`, or not
    /// at all.
    current: Option<Key>,
    /// Every key that opens, by id (the current one too).
    keys: HashMap<String, Key>,
}

impl std::fmt::Debug for FieldCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FieldCipher")
            .field("fields", &self.fields)
            .field("current", &self.current.as_ref().map(|k| &k.id))
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl FieldCipher {
    /// From the configured paths (each `payload.data.…`) and keys (base64).
    pub fn new(
        fields: &[String],
        key: Option<&str>,
        previous: &[String],
    ) -> Result<FieldCipher, CipherError> {
        let current = key.map(parse_key).transpose()?;
        let mut keys = HashMap::new();
        for k in previous {
            let k = parse_key(k)?;
            keys.insert(k.id.clone(), k);
        }
        if let Some(k) = &current {
            keys.insert(k.id.clone(), k.clone());
        }
        Ok(FieldCipher {
            fields: fields
                .iter()
                .filter_map(|f| f.strip_prefix(DATA_PREFIX))
                .map(|f| f.split('.').map(str::to_string).collect())
                .collect(),
            current,
            keys,
        })
    }

    /// Whether anything is to be sealed (fields configured and a key to seal with).
    pub fn seals(&self) -> bool {
        !self.fields.is_empty() && self.current.is_some()
    }

    pub fn key_id(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.id.as_str())
    }

    /// Seals the configured fields in `data` (a message's `payload.data`, or what was
    /// stored from it). True if it changed.
    pub fn seal_data(&self, data: &mut Value) -> bool {
        let Some(key) = self.current.as_ref().filter(|_| !self.fields.is_empty()) else {
            return false;
        };
        let mut changed = false;
        for path in &self.fields {
            if let Some(v) = lookup(data, path) {
                if !is_sealed(v) {
                    let field = format!("{DATA_PREFIX}{}", path.join("."));
                    *v = seal(key, &field, v);
                    changed = true;
                }
            }
        }
        changed
    }

    /// Seals the configured fields in an envelope (JSON). True if it changed.
    pub fn seal_envelope(&self, envelope: &mut Value) -> bool {
        match envelope.get_mut("payload").and_then(|p| p.get_mut("data")) {
            Some(data) => self.seal_data(data),
            None => false,
        }
    }

    /// An envelope's bytes with the configured fields sealed, re-serialised, or `None`
    /// when there is nothing to seal (not JSON, or none of the fields present): the
    /// bytes are then kept as received.
    pub fn seal_body(&self, body: &[u8]) -> Option<Vec<u8>> {
        if !self.seals() {
            return None;
        }
        let mut v: Value = serde_json::from_slice(body).ok()?;
        self.seal_envelope(&mut v)
            .then(|| serde_json::to_vec(&v).ok())
            .flatten()
    }

    /// Seals the configured fields in the rows a batch is about to write: a new
    /// workflow's data, an event's detail (an operator's note), a dead letter's body.
    pub fn seal_rows(&self, w: &mut Writes) {
        if !self.seals() {
            return;
        }
        for r in &mut w.new_workflows {
            self.seal_data(&mut r.data);
        }
        for e in &mut w.events {
            self.seal_data(&mut e.detail);
        }
        for d in &mut w.dead_letters {
            self.seal_dead_letter(d);
        }
    }

    /// Seals the configured fields of a dead letter's body (kept as received where
    /// none is present) and of its JSON.
    pub fn seal_dead_letter(&self, d: &mut NewDeadLetter) {
        if !self.seals() {
            return;
        }
        if let Some(body) = self.seal_body(&d.body) {
            d.body = body;
        }
        if let Some(json) = &mut d.body_json {
            self.seal_envelope(json);
        }
    }

    /// Opens every sealed value in `v`, wherever it is. The number opened.
    pub fn open(&self, v: &mut Value) -> Result<usize, CipherError> {
        match v {
            Value::Object(o) if o.contains_key(SEALED) => {
                *v = self.open_one(o)?;
                Ok(1)
            }
            Value::Object(o) => o.values_mut().map(|c| self.open(c)).sum(),
            Value::Array(a) => a.iter_mut().map(|c| self.open(c)).sum(),
            _ => Ok(0),
        }
    }

    /// An envelope's bytes with every sealed value opened, or the bytes as they are if
    /// nothing in them is sealed.
    pub fn open_body(&self, body: &[u8]) -> Result<Vec<u8>, CipherError> {
        let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
            return Ok(body.to_vec());
        };
        if self.open(&mut v)? == 0 {
            return Ok(body.to_vec());
        }
        serde_json::to_vec(&v).map_err(|e| CipherError::Malformed(e.to_string()))
    }

    fn open_one(&self, o: &Map<String, Value>) -> Result<Value, CipherError> {
        let s = o
            .get(SEALED)
            .and_then(Value::as_object)
            .ok_or_else(|| CipherError::Malformed(format!("{SEALED} is not an object")))?;
        let text = |k: &str| {
            s.get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| CipherError::Malformed(format!("{SEALED}.{k} is missing")))
        };
        let (kid, field) = (text("kid")?, text("field")?);
        let key = self.keys.get(kid).ok_or_else(|| CipherError::UnknownKey {
            field: field.to_string(),
            kid: kid.to_string(),
        })?;
        let tampered = || CipherError::Tampered {
            field: field.to_string(),
            kid: kid.to_string(),
        };
        let iv = B64.decode(text("iv")?).map_err(|_| tampered())?;
        let ct = B64.decode(text("ct")?).map_err(|_| tampered())?;
        if iv.len() != 12 {
            return Err(tampered());
        }
        let plain = key
            .cipher
            .decrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg: &ct,
                    aad: field.as_bytes(),
                },
            )
            .map_err(|_| tampered())?;
        serde_json::from_slice(&plain).map_err(|_| tampered())
    }
}

/// Whether `v` is a sealed value.
pub fn is_sealed(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.contains_key(SEALED))
}

/// Whether `v` holds a sealed value anywhere.
pub fn contains_sealed(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.contains_key(SEALED) || o.values().any(contains_sealed),
        Value::Array(a) => a.iter().any(contains_sealed),
        _ => false,
    }
}

fn lookup<'v>(v: &'v mut Value, path: &[String]) -> Option<&'v mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(k.as_str()))
}

fn seal(key: &Key, field: &str, v: &Value) -> Value {
    let mut iv = [0u8; 12];
    OsRng.fill_bytes(&mut iv);
    // Serialising a Value cannot fail.
    let plain = serde_json::to_vec(v).unwrap_or_default();
    // Encryption fails only for a message longer than AES-GCM allows (64 GiB).
    let ct = key
        .cipher
        .encrypt(
            Nonce::from_slice(&iv),
            Payload {
                msg: &plain,
                aad: field.as_bytes(),
            },
        )
        .unwrap_or_default();
    json!({SEALED: {"alg": ALG, "kid": key.id, "field": field, "iv": B64.encode(iv), "ct": B64.encode(ct)}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(fields: &[&str]) -> (FieldCipher, String) {
        let (key, _) = generate();
        let fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        (
            FieldCipher::new(&fields, Some(&key), &[]).expect("key"),
            key,
        )
    }

    #[test]
    fn configured_fields_are_sealed_and_open_to_what_they_were() {
        let (c, _) = cipher(&["payload.data.customer.email", "payload.data.token"]);
        let original = json!({"customer": {"email": "a@example.com", "name": "A"}, "token": [1, 2], "other": "x"});
        let mut data = original.clone();
        assert!(c.seal_data(&mut data));
        let text = data.to_string();
        assert!(!text.contains("a@example.com"), "{text}");
        assert_eq!(data["customer"]["name"], "A");
        assert_eq!(data["other"], "x");
        assert_eq!(data["customer"]["email"][SEALED]["kid"], json!(c.key_id()));
        assert_eq!(
            data["customer"]["email"][SEALED]["field"],
            "payload.data.customer.email"
        );
        // Sealing again changes nothing: a sealed value is not sealed twice.
        let sealed = data.clone();
        assert!(!c.seal_data(&mut data));
        assert_eq!(data, sealed);
        assert_eq!(c.open(&mut data), Ok(2));
        assert_eq!(data, original);
    }

    #[test]
    fn the_same_value_seals_differently_each_time() {
        let (c, _) = cipher(&["payload.data.x"]);
        let (mut a, mut b) = (json!({"x": "same"}), json!({"x": "same"}));
        c.seal_data(&mut a);
        c.seal_data(&mut b);
        assert_ne!(a, b, "a fresh nonce each time");
    }

    #[test]
    fn an_envelope_body_is_sealed_only_where_a_field_is_present() {
        let (c, _) = cipher(&["payload.data.secret"]);
        let with = br#"{"header":{"message_id":"m"},"payload":{"data":{"secret":"s3"}}}"#;
        let sealed = c.seal_body(with).expect("sealed");
        assert!(!String::from_utf8_lossy(&sealed).contains("s3"));
        let opened: Value =
            serde_json::from_slice(&c.open_body(&sealed).expect("opens")).expect("json");
        assert_eq!(opened, serde_json::from_slice::<Value>(with).expect("json"));
        assert_eq!(c.seal_body(br#"{"payload":{"data":{}}}"#), None);
        assert_eq!(c.seal_body(b"not json"), None);
        assert_eq!(c.open_body(b"not json"), Ok(b"not json".to_vec()));
    }

    #[test]
    fn a_previous_key_opens_what_it_sealed_and_an_unknown_one_is_named() {
        let (old, old_key) = cipher(&["payload.data.x"]);
        let mut v = json!({"x": 1});
        old.seal_data(&mut v);
        let (new_key, _) = generate();
        let rotated =
            FieldCipher::new(&["payload.data.x".into()], Some(&new_key), &[old_key]).expect("keys");
        let mut w = v.clone();
        assert_eq!(rotated.open(&mut w), Ok(1));
        assert_eq!(w, json!({"x": 1}));
        let without =
            FieldCipher::new(&["payload.data.x".into()], Some(&new_key), &[]).expect("key");
        let mut w = v.clone();
        assert!(matches!(
            without.open(&mut w),
            Err(CipherError::UnknownKey { ref kid, .. }) if Some(kid.as_str()) == old.key_id()
        ));
    }

    #[test]
    fn an_altered_ciphertext_or_a_moved_one_does_not_open() {
        let (c, _) = cipher(&["payload.data.x", "payload.data.y"]);
        let mut v = json!({"x": "secret", "y": "other"});
        c.seal_data(&mut v);
        let mut altered = v.clone();
        let ct = altered["x"][SEALED]["ct"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut bytes = B64.decode(ct).expect("b64");
        bytes[0] ^= 1;
        altered["x"][SEALED]["ct"] = json!(B64.encode(bytes));
        assert!(matches!(
            c.open(&mut altered),
            Err(CipherError::Tampered { .. })
        ));
        // x's ciphertext claimed for y: the field is the associated data.
        let mut moved = v.clone();
        moved["x"][SEALED]["field"] = json!("payload.data.y");
        assert!(matches!(
            c.open(&mut moved),
            Err(CipherError::Tampered { .. })
        ));
    }

    #[test]
    fn a_bad_key_is_refused() {
        for k in ["", "not base64!", &B64.encode([0u8; 16])] {
            assert_eq!(
                FieldCipher::new(&[], Some(k), &[]).err(),
                Some(CipherError::BadKey)
            );
        }
    }
}
