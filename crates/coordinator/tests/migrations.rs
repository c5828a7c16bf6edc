//! Upgrades: a database an older coordinator wrote keeps what its managers read.

use test_support::TestEnv;

/// id, key_name, business_key, epic_id
type KeyColumns = (String, Option<String>, Option<String>, Option<String>);

/// Before migration 17 the coordinator wrote `workflows.epic_id` itself; now it writes
/// each workflow's key name and value and `epic_id` is derived from them. Rows written
/// before keep their epic_id, and get the key it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_written_before_the_key_name_keep_their_epic_id() {
    let env = TestEnv::migrated_up_to(20261203000016).await;
    sqlx::query(
        "INSERT INTO workflows (id, kind, state, epic_id, business_key) VALUES
           ('fd', 'feature_delivery', 'testing', 'E-1', 'E-1'),
           ('lh', 'launch_handoff', 'deployed', 'E-2', NULL),
           ('cr', 'code_review', 'reviewing', NULL, 'CH-7'),
           ('odd', 'custom', 'started', 'E-3', 'K-3')",
    )
    .execute(&env.pool)
    .await
    .expect("rows as an older coordinator wrote them");

    coordinator::db::MIGRATOR
        .run(&env.pool)
        .await
        .expect("the upgrade applies");

    let rows: Vec<KeyColumns> =
        sqlx::query_as("SELECT id, key_name, business_key, epic_id FROM workflows ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .expect("the upgraded rows");
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        rows,
        [
            ("cr".into(), None, s("CH-7"), None),
            ("fd".into(), s("epic_id"), s("E-1"), s("E-1")),
            ("lh".into(), s("epic_id"), s("E-2"), s("E-2")),
            // Keyed on something else: its own key stays, the epic id leaves this column.
            ("odd".into(), None, s("K-3"), None),
        ]
    );
    // The column cannot be written any more: only the key is.
    let written = sqlx::query("UPDATE workflows SET epic_id = 'X' WHERE id = 'fd'")
        .execute(&env.pool)
        .await;
    assert!(written.is_err(), "epic_id is derived, not written");
}
