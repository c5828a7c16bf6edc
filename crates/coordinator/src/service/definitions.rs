//! Versioned workflow definitions at start (docs/workflows.md, "Versions"): the
//! definitions this service runs are recorded with their text, and each earlier
//! version that live workflows still use is read back and learnt, so those workflows
//! finish under the rules they started with. A workflow kind that has live workflows
//! and no definition any more refuses the start, naming them.

use protocol::catalog::Catalog;

use crate::db::{self, Pool};
use crate::domain::definition::{self, Definitions};

/// Why the service does not start: what an operator must do first.
pub type Refusal = String;

/// Records the current definitions and learns the earlier ones live workflows use.
pub async fn resolve(
    pool: &Pool,
    defs: &Definitions,
    catalog: &Catalog,
) -> db::Result<Result<(), Refusal>> {
    db::definitions::register(pool, &defs.iter().collect::<Vec<_>>()).await?;
    let running: Vec<String> = defs
        .iter()
        .map(|d| format!("{} v{} ({})", d.name, d.version, &d.hash[..12]))
        .collect();
    tracing::info!(workflows = %running.join(", "), "running these workflow definitions");
    let mut refusals = Vec::new();
    for live in db::definitions::live(pool).await? {
        let Some(current) = defs.get(&live.kind) else {
            refusals.push(format!(
                "workflow definition {:?} is gone, and {} live workflow(s) use it ({}{}): put config/workflows/{}.toml back, or close them with `coordinator workflow cancel <id> --reason ...` first",
                live.kind,
                live.count,
                live.examples.join(", "),
                if live.count > live.examples.len() as i64 { ", …" } else { "" },
                live.kind
            ));
            continue;
        };
        let Some(hash) = live.hash.as_deref().filter(|h| *h != current.hash) else {
            continue;
        };
        let file = format!(
            "(stored) {} version {}",
            live.kind,
            &hash[..hash.len().min(12)]
        );
        match live.source.as_deref().map(|text| definition::parse(&file, text, catalog)) {
            Some(Ok(def)) => {
                tracing::info!(
                    workflow = def.name,
                    version = def.version,
                    hash = &def.hash[..12],
                    live = live.count,
                    "live workflows keep an earlier version of their definition"
                );
                defs.learn(def);
            }
            Some(Err(errors)) => refusals.push(format!(
                "{} live {} workflow(s) ({}) use an earlier version of the definition that the configuration no longer accepts: {}",
                live.count,
                live.kind,
                live.examples.join(", "),
                errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            )),
            None => refusals.push(format!(
                "{} live {} workflow(s) ({}) use a definition version {hash} that workflow_definitions does not hold",
                live.count,
                live.kind,
                live.examples.join(", ")
            )),
        }
    }
    Ok(if refusals.is_empty() {
        Ok(())
    } else {
        Err(refusals.join("\n"))
    })
}
