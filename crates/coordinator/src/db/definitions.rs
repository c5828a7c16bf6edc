//! `workflow_definitions`: every version of a workflow definition the service has run,
//! kept with the workflows that started with it (docs/workflows.md, "Versions").

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::domain::definition::Definition;

/// Records the definitions a service starts with (a version seen before is kept as it
/// was first seen).
pub async fn register(pool: &PgPool, defs: &[&Definition]) -> super::Result<()> {
    sqlx::query(
        "INSERT INTO workflow_definitions (hash, name, version, source)
         SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[])
         ON CONFLICT (hash) DO NOTHING",
    )
    .bind(defs.iter().map(|d| d.hash.as_str()).collect::<Vec<_>>())
    .bind(defs.iter().map(|d| d.name).collect::<Vec<_>>())
    .bind(defs.iter().map(|d| d.version).collect::<Vec<_>>())
    .bind(defs.iter().map(|d| d.source).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}

/// The live (not completed) workflows, counted by kind and definition version.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Live {
    pub kind: String,
    /// `None`: started before versions were kept.
    pub hash: Option<String>,
    pub count: i64,
    /// Up to five of their ids, for the operator.
    pub examples: Vec<String>,
    /// The stored text of that version, when it is stored.
    pub source: Option<String>,
}

pub async fn live(pool: &PgPool) -> super::Result<Vec<Live>> {
    Ok(sqlx::query_as(
        "SELECT w.kind, w.definition_hash AS hash, count(*) AS count,
                (array_agg(w.id ORDER BY w.id))[1:5] AS examples, max(d.source) AS source
           FROM workflows w LEFT JOIN workflow_definitions d ON d.hash = w.definition_hash
          WHERE w.completed_at IS NULL AND w.kind <> 'emergency'
          GROUP BY w.kind, w.definition_hash
          ORDER BY w.kind, w.definition_hash",
    )
    .fetch_all(pool)
    .await?)
}

/// A stored version, for `coordinator workflow definitions`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stored {
    pub name: String,
    pub version: i32,
    pub hash: String,
    pub first_seen_at: DateTime<Utc>,
    /// Workflows started with it that are not completed.
    pub live: i64,
    /// Workflows started with it.
    pub started: i64,
}

pub async fn list(pool: &PgPool) -> super::Result<Vec<Stored>> {
    Ok(sqlx::query_as(
        "SELECT d.name, d.version, d.hash, d.first_seen_at,
                count(w.id) FILTER (WHERE w.completed_at IS NULL) AS live, count(w.id) AS started
           FROM workflow_definitions d LEFT JOIN workflows w ON w.definition_hash = d.hash
          GROUP BY d.hash ORDER BY d.name, d.first_seen_at",
    )
    .fetch_all(pool)
    .await?)
}

/// The text of the latest stored version of each definition, by name: what a CLI run
/// without the configuration folder that defined a workflow reads its states and its
/// diagram from.
pub async fn latest_sources(pool: &PgPool) -> super::Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT ON (name) name, source
           FROM workflow_definitions
          ORDER BY name, version DESC, first_seen_at DESC",
    )
    .fetch_all(pool)
    .await?)
}
