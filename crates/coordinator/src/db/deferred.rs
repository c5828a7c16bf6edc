//! `deferred_messages`: deliveries a rate limit held back, kept until a batch applies
//! them (docs/architecture.md, "Rate limits").

use chrono::{DateTime, Utc};
use protocol::envelope::DeliveryMeta;
use sqlx::PgConnection;

use crate::engine::rows::{OutboxMessage, Writes, Written};

/// A delivery to hold back.
#[derive(Debug, Clone)]
pub struct NewDeferred<'a> {
    pub message_id: &'a str,
    /// The admitted sender (engine::admission), whose limit held it back.
    pub sender: &'a str,
    pub sender_role: &'a str,
    pub message_type: &'a str,
    pub correlation_id: &'a str,
    pub body: &'a [u8],
    pub meta: &'a DeliveryMeta,
}

/// What the partition keeps in memory of a held delivery (not its body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: i64,
    pub sender: String,
    pub sender_role: String,
    pub message_type: String,
    pub correlation_id: Option<String>,
}

/// A held delivery as received, to apply.
#[derive(Debug, Clone)]
pub struct Released {
    pub id: i64,
    pub body: Vec<u8>,
    pub meta: DeliveryMeta,
    /// When it was received (and held): it is admitted again as of then.
    pub deferred_at: DateTime<Utc>,
}

/// Holds `rows` back for inbox partition `partition` and queues `notices` in the outbox,
/// in one transaction. A message id already held is not held twice (a redelivery
/// after a crash before the ack). Returns what was held, in delivery order.
pub async fn hold(
    conn: &mut PgConnection,
    partition: u32,
    rows: &[NewDeferred<'_>],
    notices: Vec<OutboxMessage>,
    now: DateTime<Utc>,
    publish_after: DateTime<Utc>,
) -> super::Result<(Vec<Held>, Written)> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let metas: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::to_value(r.meta).unwrap_or_default())
        .collect();
    let held: Vec<(i64, String, String, String, Option<String>)> = sqlx::query_as(
        "INSERT INTO deferred_messages (inbox_partition, message_id, sender, sender_role,
             message_type, correlation_id, body, properties, deferred_at)
         SELECT $1, m, s, r, t, c, b, p, $9
           FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::bytea[], $8::jsonb[]) WITH ORDINALITY AS x(m, s, r, t, c, b, p, n)
          ORDER BY n
         ON CONFLICT (message_id) DO NOTHING
         RETURNING id, sender, sender_role, message_type, correlation_id",
    )
    .bind(partition as i32)
    .bind(rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.sender).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.sender_role).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.message_type).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.correlation_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body).collect::<Vec<_>>())
    .bind(metas)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let writes = Writes {
        outbox: notices,
        ..Default::default()
    };
    let written = super::batch::write(&mut tx, writes, publish_after).await?;
    tx.commit().await?;
    let mut held: Vec<Held> = held.into_iter().map(held_row).collect();
    held.sort_by_key(|h| h.id);
    Ok((held, written))
}

fn held_row(
    (id, sender, sender_role, message_type, correlation_id): (
        i64,
        String,
        String,
        String,
        Option<String>,
    ),
) -> Held {
    Held {
        id,
        sender,
        sender_role,
        message_type,
        correlation_id,
    }
}

/// Every delivery held for `partition`, in the order it is to be applied: what a
/// consumer taking the partition starts from.
pub async fn held(conn: &mut PgConnection, partition: u32) -> super::Result<Vec<Held>> {
    let rows: Vec<(i64, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT id, sender, sender_role, message_type, correlation_id
           FROM deferred_messages WHERE inbox_partition = $1 ORDER BY id",
    )
    .bind(partition as i32)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(held_row).collect())
}

/// The bodies and properties of held deliveries `ids`, in id order.
pub async fn bodies(conn: &mut PgConnection, ids: &[i64]) -> super::Result<Vec<Released>> {
    let rows: Vec<(i64, Vec<u8>, serde_json::Value, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, body, properties, deferred_at FROM deferred_messages
          WHERE id = ANY($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, body, props, deferred_at)| Released {
            id,
            body,
            // Written from a DeliveryMeta by `hold`; a row edited by hand into another
            // shape is applied with what is left, and refused for what is missing.
            meta: serde_json::from_value(props).unwrap_or_default(),
            deferred_at,
        })
        .collect())
}

/// Forgets held deliveries once a committed batch applied them.
pub async fn forget(conn: &mut PgConnection, ids: &[i64]) -> super::Result<()> {
    sqlx::query("DELETE FROM deferred_messages WHERE id = ANY($1)")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}
