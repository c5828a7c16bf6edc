//! Partition leases as PostgreSQL advisory locks, held on a connection of their own:
//! a coordinator is a member while it holds its membership lock, and owns a partition
//! while it holds that partition's lock. A process that dies loses its connection and
//! with it every lock, at once; `pg_locks` shows who holds what to everyone.

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

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

/// The start of the lease connections' `application_name`.
pub const LEASES_APPLICATION: &str = "coordinator leases";

/// The connection that holds this coordinator's membership and partition locks.
pub struct Leases {
    conn: PgConnection,
    key: i32,
}

impl Leases {
    /// Connects to `database_url` and takes a free membership key. The session's
    /// `application_name` is `coordinator leases <instance>` (host, pid and a random
    /// suffix, as in `processed_messages.processed_by`), so `pg_stat_activity` tells two
    /// coordinators on one host apart; PostgreSQL keeps its first 63 bytes.
    pub async fn join(database_url: &str, instance: &str) -> super::Result<Leases> {
        let options: PgConnectOptions = database_url.parse()?;
        let options = options.application_name(&format!("{LEASES_APPLICATION} {instance}"));
        let mut conn = PgConnection::connect_with(&options).await?;
        for _ in 0..8 {
            let key =
                i32::try_from(uuid::Uuid::new_v4().as_u128() % (i32::MAX as u128)).unwrap_or(1);
            if try_lock(&mut conn, MEMBER_CLASS, key).await? {
                return Ok(Leases { conn, key });
            }
        }
        Err(super::Error::NoMembershipKey)
    }

    /// This coordinator's membership key.
    pub fn key(&self) -> i32 {
        self.key
    }

    /// Takes a partition's lock; false if another coordinator holds it.
    pub async fn acquire(&mut self, partition: i32) -> super::Result<bool> {
        try_lock(&mut self.conn, PARTITION_CLASS, partition).await
    }

    pub async fn release(&mut self, partition: i32) -> super::Result<()> {
        sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(PARTITION_CLASS)
            .bind(partition)
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Who holds what.
    pub async fn holders(&mut self) -> super::Result<Holders> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT classid::int8, objid::int8 FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 2
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND classid::int8 IN ($1, $2)
             ORDER BY 1, 2",
        )
        .bind(i64::from(MEMBER_CLASS))
        .bind(i64::from(PARTITION_CLASS))
        .fetch_all(&mut self.conn)
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

    /// Closes the connection: every lock goes with it.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

async fn try_lock(conn: &mut PgConnection, class: i32, key: i32) -> super::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(class)
        .bind(key)
        .fetch_one(conn)
        .await
        .map_err(super::Error::from)
}
