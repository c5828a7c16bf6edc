//! The audit log's upkeep and its check: anchoring the chains' heads every
//! `security.audit_anchor_interval`, and `coordinator audit verify`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::db::{self, Pool};
use crate::domain::audit::{self, Anchored, Break, ChainCheck};

/// What a check of the whole audit log found intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub chains: usize,
    pub rows: u64,
}

/// Checks every chain, the anchor chain first (what it recorded is then checked
/// against the other chains): `Err` is the first row found altered, inserted or
/// removed.
pub async fn verify(pool: &Pool) -> db::Result<Result<Verified, Break>> {
    let mut conn = pool.acquire().await?;
    let heads = db::audit::heads(&mut conn).await?;
    let head = |chain: &str| heads.iter().find(|h| h.chain == chain);
    let mut anchored = Anchored::new();
    let mut check = ChainCheck::new(audit::ANCHOR_CHAIN, Default::default());
    let mut rows = match db::audit::each_row(&mut conn, audit::ANCHOR_CHAIN, |r| {
        check.row(&r)?;
        audit::read_anchor(&r, &mut anchored);
        Ok(())
    })
    .await?
    {
        Ok(n) => n,
        Err(b) => return Ok(Err(b)),
    };
    if let Err(b) = check.finish(head(audit::ANCHOR_CHAIN)) {
        return Ok(Err(b));
    }
    let mut chains = db::audit::chains(&mut conn).await?;
    chains.retain(|c| c != audit::ANCHOR_CHAIN);
    // A chain removed whole is still named by its anchors.
    for c in anchored.keys() {
        if !chains.contains(c) {
            chains.push(c.clone());
        }
    }
    chains.sort();
    for chain in &chains {
        let mut check = ChainCheck::new(chain, anchored.remove(chain).unwrap_or_default());
        match db::audit::each_row(&mut conn, chain, |r| check.row(&r)).await? {
            Ok(n) => rows += n,
            Err(b) => return Ok(Err(b)),
        }
        if let Err(b) = check.finish(head(chain)) {
            return Ok(Err(b));
        }
    }
    Ok(Ok(Verified {
        chains: chains.len() + 1,
        rows,
    }))
}

/// Anchors the chains every `interval` until `stop`.
pub async fn anchor_every(
    pool: &Pool,
    interval: Duration,
    clock: &dyn Clock,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval.max(Duration::from_secs(1))) => {}
        }
        if let Err(e) = db::audit::anchor(pool, clock.now()).await {
            tracing::warn!(error = %e, "could not anchor the audit log's chains; will try again");
        }
    }
}
