//! The audit log's statements off the hot path: a chain's first head, an operator's
//! command appended in its own transaction, the anchor, and reading the chains back for
//! `coordinator audit verify`. (Batches append with their other writes, `batch`.)

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::PgConnection;

use super::batch;
use crate::domain::audit::{self, Entry, Head, Record};
use crate::engine::rows::Writes;

/// Creates the chain's head if it has none yet, and locks it. A batch does this once
/// per chain, the first time it appends (the claim found no head to lock).
pub async fn lock_new_head(conn: &mut PgConnection, chain: &str) -> super::Result<Head> {
    let empty = Head::empty(chain);
    sqlx::query(
        "INSERT INTO audit_heads (chain, seq, hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(chain)
    .bind(empty.seq)
    .bind(&empty.hash)
    .execute(&mut *conn)
    .await?;
    let (seq, hash) = sqlx::query_as::<_, (i64, Vec<u8>)>(
        "SELECT seq, hash FROM audit_heads WHERE chain = $1 FOR UPDATE",
    )
    .bind(chain)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Head {
        chain: chain.to_string(),
        seq,
        hash,
    })
}

/// Appends `entries` to `chain` inside the caller's transaction (an operator's command
/// that does not go through a batch).
pub async fn append(
    conn: &mut PgConnection,
    chain: &str,
    entries: Vec<Entry>,
    at: DateTime<Utc>,
) -> super::Result<()> {
    let head = lock_new_head(conn, chain).await?;
    let mut w = Writes::default();
    w.audit(Some(&head), at, entries);
    batch::write(conn, w, at).await?;
    Ok(())
}

/// Every chain's head.
pub async fn heads(conn: &mut PgConnection) -> super::Result<Vec<Head>> {
    let rows = sqlx::query_as::<_, (String, i64, Vec<u8>)>(
        "SELECT chain, seq, hash FROM audit_heads ORDER BY chain",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(chain, seq, hash)| Head { chain, seq, hash })
        .collect())
}

/// Records every other chain's head in the anchor chain, unless nothing was appended
/// since the last anchor. True if it wrote one.
pub async fn anchor(pool: &super::Pool, at: DateTime<Utc>) -> super::Result<bool> {
    let mut tx = pool.begin().await?;
    let anchor = lock_new_head(&mut tx, audit::ANCHOR_CHAIN).await?;
    let heads = heads(&mut tx).await?;
    let entry = audit::anchor_entry(&heads);
    let last = match anchor.seq {
        0 => None,
        seq => {
            sqlx::query_scalar::<_, serde_json::Value>(
                "SELECT context FROM audit_log WHERE chain = $1 AND seq = $2",
            )
            .bind(audit::ANCHOR_CHAIN)
            .bind(seq)
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    if last.as_ref() == Some(&entry.context)
        || entry.context["heads"]
            .as_object()
            .is_some_and(|h| h.is_empty())
    {
        return Ok(false);
    }
    let mut w = Writes::default();
    w.audit(Some(&anchor), at, vec![entry]);
    batch::write(&mut tx, w, at).await?;
    tx.commit().await?;
    Ok(true)
}

/// Feeds every row of `chain` to `each`, in seq order, without holding them all.
pub async fn each_row(
    conn: &mut PgConnection,
    chain: &str,
    mut each: impl FnMut(Record) -> Result<(), audit::Break>,
) -> super::Result<Result<u64, audit::Break>> {
    let mut rows = sqlx::query_as::<
        _,
        (
            i64,
            DateTime<Utc>,
            String,
            String,
            String,
            String,
            serde_json::Value,
            serde_json::Value,
            Vec<u8>,
            Vec<u8>,
        ),
    >(
        "SELECT seq, at, actor, action, target, result, context, metadata, prev_hash, hash
           FROM audit_log WHERE chain = $1 ORDER BY seq",
    )
    .bind(chain)
    .fetch(conn);
    let mut n = 0;
    while let Some((seq, at, actor, action, target, result, context, metadata, prev_hash, hash)) =
        rows.try_next().await?
    {
        let r = Record {
            chain: chain.to_string(),
            seq,
            at,
            entry: Entry {
                actor,
                action,
                target,
                result,
                context,
                metadata,
            },
            prev_hash,
            hash,
        };
        if let Err(b) = each(r) {
            return Ok(Err(b));
        }
        n += 1;
    }
    Ok(Ok(n))
}

/// Every chain that has rows or a head.
pub async fn chains(conn: &mut PgConnection) -> super::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT chain FROM audit_heads UNION SELECT DISTINCT chain FROM audit_log ORDER BY 1",
    )
    .fetch_all(conn)
    .await?)
}
