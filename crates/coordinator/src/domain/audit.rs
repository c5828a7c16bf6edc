//! The audit log's hash chains, pure: how a row's hash is computed, how entries are
//! appended after a chain's head, and how a chain read back is checked.
//!
//! Each writer appends to a chain of its own (an inbox partition, the operator's
//! commands), so that partitions never wait for each other; the anchor chain
//! periodically records every chain's head, which ties them together. A row's hash is
//! SHA-256 over the canonical JSON (`protocol::canonical`) of
//! `{"action", "actor", "at", "chain", "context", "metadata", "prev", "result", "seq",
//! "target"}`, where `prev` is the previous row's hash in lowercase hex (64 zeros
//! before the first row) and `at` is RFC 3339 in UTC with microseconds.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The `prev` of a chain's first row.
pub const GENESIS: [u8; 32] = [0; 32];

/// The chain of the operator's commands (CLI).
pub const OPERATOR_CHAIN: &str = "operator";
/// The chain whose rows record every other chain's head.
pub const ANCHOR_CHAIN: &str = "anchor";

/// The chain of inbox partition `partition`.
pub fn inbox_chain(partition: u32) -> String {
    format!("inbox.{partition}")
}

/// What happened, as the seed's audit record has it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Who: the sending agent, or the operator.
    pub actor: String,
    /// What: the message type, or the command.
    pub action: String,
    /// To what: the workflow, incident, agent or dead letter.
    pub target: String,
    /// `accepted`, `observed`, `duplicate`, `rejected:<reason>`, `done`.
    pub result: String,
    /// Where it came from (message id, routing key, broker user).
    pub context: Value,
    /// What else is worth keeping (the transition, the reason's detail).
    pub metadata: Value,
}

/// A chain's last row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub chain: String,
    pub seq: i64,
    pub hash: Vec<u8>,
}

impl Head {
    /// A chain with no rows yet.
    pub fn empty(chain: &str) -> Head {
        Head {
            chain: chain.to_string(),
            seq: 0,
            hash: GENESIS.to_vec(),
        }
    }
}

/// A row of `audit_log`.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub chain: String,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub entry: Entry,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl Record {
    /// The hash this row's content and `prev_hash` call for.
    pub fn digest(&self) -> Vec<u8> {
        digest(&self.prev_hash, &self.chain, self.seq, self.at, &self.entry)
    }
}

fn digest(prev: &[u8], chain: &str, seq: i64, at: DateTime<Utc>, e: &Entry) -> Vec<u8> {
    let doc = json!({
        "action": e.action,
        "actor": e.actor,
        "at": at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "chain": chain,
        "context": e.context,
        "metadata": e.metadata,
        "prev": hex::encode(prev),
        "result": e.result,
        "seq": seq,
        "target": e.target,
    });
    Sha256::digest(protocol::canonical::to_vec(&doc)).to_vec()
}

/// Appends `entries` after `head`, all at `at`: the rows to insert and the new head.
pub fn link(head: &Head, at: DateTime<Utc>, entries: Vec<Entry>) -> (Vec<Record>, Head) {
    // PostgreSQL keeps microseconds: the hash is over what is stored.
    let at = at.trunc_subsecs(6);
    let mut prev = head.hash.clone();
    let mut seq = head.seq;
    let rows: Vec<Record> = entries
        .into_iter()
        .map(|entry| {
            seq += 1;
            let hash = digest(&prev, &head.chain, seq, at, &entry);
            let prev_hash = std::mem::replace(&mut prev, hash.clone());
            Record {
                chain: head.chain.clone(),
                seq,
                at,
                entry,
                prev_hash,
                hash,
            }
        })
        .collect();
    let new_head = Head {
        chain: head.chain.clone(),
        seq,
        hash: prev,
    };
    (rows, new_head)
}

/// The anchor row's entry: every chain's head at `at`.
pub fn anchor_entry(heads: &[Head]) -> Entry {
    let heads: serde_json::Map<String, Value> = heads
        .iter()
        .filter(|h| h.chain != ANCHOR_CHAIN && h.seq > 0)
        .map(|h| {
            (
                h.chain.clone(),
                json!({"seq": h.seq, "hash": hex::encode(&h.hash)}),
            )
        })
        .collect();
    Entry {
        actor: "coordinator".into(),
        action: "anchor".into(),
        target: "audit_log".into(),
        result: "done".into(),
        context: json!({ "heads": heads }),
        metadata: json!({}),
    }
}

/// The first thing found wrong with the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The row's content (or its hash) was changed: the hash does not match.
    Altered { chain: String, seq: i64 },
    /// Rows are missing between two rows.
    Removed { chain: String, from: i64, to: i64 },
    /// The row does not follow the row before it: that row was replaced, or this one
    /// was put in its place.
    Relinked { chain: String, seq: i64 },
    /// The chain ends before its recorded head (or an anchor): its last rows were
    /// removed.
    Truncated {
        chain: String,
        last: i64,
        expected: i64,
    },
    /// A row differs from what an anchor recorded of it.
    Unanchored {
        chain: String,
        seq: i64,
        anchor_seq: i64,
    },
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Break::Altered { chain, seq } => write!(
                f,
                "chain {chain}, row {seq}: altered (its content does not match its hash)"
            ),
            Break::Removed { chain, from, to } if from == to => {
                write!(f, "chain {chain}, row {from}: removed")
            }
            Break::Removed { chain, from, to } => {
                write!(f, "chain {chain}, rows {from} to {to}: removed")
            }
            Break::Relinked { chain, seq } => write!(
                f,
                "chain {chain}, row {seq}: does not follow row {} (one of the two was replaced or inserted)",
                seq - 1
            ),
            Break::Truncated {
                chain,
                last,
                expected,
            } => write!(
                f,
                "chain {chain}: ends at row {last} but row {expected} was written; rows {} to {expected} were removed",
                last + 1
            ),
            Break::Unanchored {
                chain,
                seq,
                anchor_seq,
            } => write!(
                f,
                "chain {chain}, row {seq}: differs from what anchor row {anchor_seq} recorded (altered or replaced)"
            ),
        }
    }
}

/// Checks one chain's rows, fed in `seq` order, against each other, against what the
/// anchors recorded of them, and at the end against the chain's head.
#[derive(Debug)]
pub struct ChainCheck {
    chain: String,
    last: i64,
    prev: Vec<u8>,
    /// What anchors recorded: seq → (hash, the anchor row).
    anchored: BTreeMap<i64, (Vec<u8>, i64)>,
}

impl ChainCheck {
    pub fn new(chain: &str, anchored: BTreeMap<i64, (Vec<u8>, i64)>) -> ChainCheck {
        ChainCheck {
            chain: chain.to_string(),
            last: 0,
            prev: GENESIS.to_vec(),
            anchored,
        }
    }

    /// The next row.
    pub fn row(&mut self, r: &Record) -> Result<(), Break> {
        let chain = self.chain.clone();
        if r.digest() != r.hash {
            return Err(Break::Altered { chain, seq: r.seq });
        }
        if r.seq > self.last + 1 {
            return Err(Break::Removed {
                chain,
                from: self.last + 1,
                to: r.seq - 1,
            });
        }
        if r.seq != self.last + 1 || r.prev_hash != self.prev {
            return Err(Break::Relinked { chain, seq: r.seq });
        }
        if let Some((hash, anchor_seq)) = self.anchored.get(&r.seq) {
            if *hash != r.hash {
                return Err(Break::Unanchored {
                    chain,
                    seq: r.seq,
                    anchor_seq: *anchor_seq,
                });
            }
        }
        self.last = r.seq;
        self.prev = r.hash.clone();
        Ok(())
    }

    /// After the last row: the chain reaches its head and every anchored row. The
    /// last row and hash checked.
    pub fn finish(self, head: Option<&Head>) -> Result<(i64, Vec<u8>), Break> {
        let expected = self
            .anchored
            .keys()
            .next_back()
            .copied()
            .into_iter()
            .chain(head.map(|h| h.seq))
            .max()
            .unwrap_or(0);
        if expected > self.last {
            return Err(Break::Truncated {
                chain: self.chain,
                last: self.last,
                expected,
            });
        }
        Ok((self.last, self.prev))
    }
}

/// What an anchor row recorded: chain → seq → (hash, the anchor's seq).
pub type Anchored = BTreeMap<String, BTreeMap<i64, (Vec<u8>, i64)>>;

/// Adds what anchor row `r` recorded to `into` (rows of the anchor chain only).
pub fn read_anchor(r: &Record, into: &mut Anchored) {
    let Some(heads) = r.entry.context.get("heads").and_then(Value::as_object) else {
        return;
    };
    for (chain, h) in heads {
        let seq = h.get("seq").and_then(Value::as_i64);
        let hash = h
            .get("hash")
            .and_then(Value::as_str)
            .and_then(|s| hex::decode(s).ok());
        if let (Some(seq), Some(hash)) = (seq, hash) {
            into.entry(chain.clone())
                .or_default()
                .insert(seq, (hash, r.seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Entry {
        Entry {
            actor: format!("qa-{n:03}"),
            action: "tests_passed".into(),
            target: "wf-1".into(),
            result: "accepted".into(),
            context: json!({"message_id": format!("m-{n}")}),
            metadata: json!({}),
        }
    }

    fn chain(n: usize) -> Vec<Record> {
        let at = Utc::now();
        let (mut rows, head) = link(&Head::empty("inbox.0"), at, (0..n / 2).map(entry).collect());
        let (more, _) = link(&head, at, (n / 2..n).map(entry).collect());
        rows.extend(more);
        rows
    }

    fn check(rows: &[Record], head: Option<&Head>) -> Result<i64, Break> {
        let mut c = ChainCheck::new("inbox.0", BTreeMap::new());
        for r in rows {
            c.row(r)?;
        }
        c.finish(head).map(|(last, _)| last)
    }

    #[test]
    fn rows_linked_over_two_batches_verify() {
        let rows = chain(6);
        assert_eq!(
            rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        assert_eq!(rows[3].prev_hash, rows[2].hash);
        assert_eq!(check(&rows, None), Ok(6));
    }

    #[test]
    fn a_changed_field_is_found_at_its_row() {
        let mut rows = chain(5);
        rows[2].entry.result = "rejected:unauthorized".into();
        assert_eq!(
            check(&rows, None),
            Err(Break::Altered {
                chain: "inbox.0".into(),
                seq: 3
            })
        );
    }

    #[test]
    fn a_row_rewritten_with_a_fresh_hash_breaks_the_next_link() {
        let mut rows = chain(5);
        rows[1].entry.actor = "someone-else".into();
        rows[1].hash = rows[1].digest();
        assert_eq!(
            check(&rows, None),
            Err(Break::Relinked {
                chain: "inbox.0".into(),
                seq: 3
            })
        );
    }

    #[test]
    fn a_deleted_row_is_named() {
        let mut rows = chain(5);
        rows.remove(1);
        assert_eq!(
            check(&rows, None),
            Err(Break::Removed {
                chain: "inbox.0".into(),
                from: 2,
                to: 2
            })
        );
    }

    #[test]
    fn rows_deleted_from_the_end_are_found_by_the_head() {
        let mut rows = chain(5);
        let head = Head {
            chain: "inbox.0".into(),
            seq: 5,
            hash: rows[4].hash.clone(),
        };
        rows.truncate(3);
        assert_eq!(
            check(&rows, Some(&head)),
            Err(Break::Truncated {
                chain: "inbox.0".into(),
                last: 3,
                expected: 5
            })
        );
    }

    #[test]
    fn an_anchor_finds_a_rewritten_tail() {
        let rows = chain(4);
        let heads = [Head {
            chain: "inbox.0".into(),
            seq: 3,
            hash: rows[2].hash.clone(),
        }];
        let (anchors, _) = link(
            &Head::empty(ANCHOR_CHAIN),
            Utc::now(),
            vec![anchor_entry(&heads)],
        );
        let mut anchored = Anchored::new();
        read_anchor(&anchors[0], &mut anchored);
        // The tail rewritten from row 3 on, every hash recomputed: only the anchor knows.
        let mut forged = rows[..2].to_vec();
        let tail: Vec<Entry> = (10..12).map(entry).collect();
        let (t, _) = link(
            &Head {
                chain: "inbox.0".into(),
                seq: 2,
                hash: rows[1].hash.clone(),
            },
            Utc::now(),
            tail,
        );
        forged.extend(t);
        let mut c = ChainCheck::new("inbox.0", anchored["inbox.0"].clone());
        let found = forged.iter().try_for_each(|r| c.row(r));
        assert_eq!(
            found,
            Err(Break::Unanchored {
                chain: "inbox.0".into(),
                seq: 3,
                anchor_seq: 1
            })
        );
    }

    #[test]
    fn the_hash_is_over_the_documented_canonical_form() {
        let at: DateTime<Utc> = "2026-12-03T10:00:00.123456Z".parse().unwrap();
        let (rows, _) = link(&Head::empty("operator"), at, vec![entry(1)]);
        let doc = format!(
            r#"{{"action":"tests_passed","actor":"qa-001","at":"2026-12-03T10:00:00.123456Z","chain":"operator","context":{{"message_id":"m-1"}},"metadata":{{}},"prev":"{}","result":"accepted","seq":1,"target":"wf-1"}}"#,
            "0".repeat(64)
        );
        assert_eq!(rows[0].hash, Sha256::digest(doc.as_bytes()).to_vec());
    }
}
