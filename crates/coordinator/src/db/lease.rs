//! Partition leases as PostgreSQL advisory locks, held on a connection of their own:
//! a coordinator is a member while it holds its membership lock, and owns a partition
//! while it holds that partition's lock. A process that dies loses its connection and
//! with it every lock, at once; `pg_locks` shows who holds what to everyone.

use sqlx::PgConnection;

/// Advisory lock classes (the first of the two keys), in this database only.
pub const MEMBER_CLASS: i32 = 0x0C0D_0001;
pub const PARTITION_CLASS: i32 = 0x0C0D_0002;

/// Who holds what, as `pg_locks` says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Holders {
    /// Membership keys of the live coordinators, sorted.
    pub members: Vec<i64>,
    /// Partitions held by anyone.
    pub partitions: Vec<i64>,
}

/// Takes a membership lock; false if the key is taken (pick another).
pub async fn join(conn: &mut PgConnection, key: i32) -> sqlx::Result<bool> {
    try_lock(conn, MEMBER_CLASS, key).await
}

/// Takes a partition's lock; false if another coordinator holds it.
pub async fn acquire(conn: &mut PgConnection, partition: i32) -> sqlx::Result<bool> {
    try_lock(conn, PARTITION_CLASS, partition).await
}

pub async fn release(conn: &mut PgConnection, partition: i32) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(PARTITION_CLASS)
        .bind(partition)
        .execute(conn)
        .await?;
    Ok(())
}

async fn try_lock(conn: &mut PgConnection, class: i32, key: i32) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(class)
        .bind(key)
        .fetch_one(conn)
        .await
}

pub async fn holders(conn: &mut PgConnection) -> sqlx::Result<Holders> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT classid::int8, objid::int8 FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND objsubid = 2
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND classid::int8 IN ($1, $2)
         ORDER BY 1, 2",
    )
    .bind(i64::from(MEMBER_CLASS))
    .bind(i64::from(PARTITION_CLASS))
    .fetch_all(conn)
    .await?;
    let mut h = Holders::default();
    for (class, key) in rows {
        if class == i64::from(MEMBER_CLASS) {
            h.members.push(key);
        } else {
            h.partitions.push(key);
        }
    }
    Ok(h)
}
