//! Each service migrates its own tables (`ccm_core::schema`), and a database migrated before
//! the sets were split upgrades cleanly.

use std::borrow::Cow;

use ccm_core::schema::{self, READ_MODEL, WEBHOOKS};
use ccm_tests::TestEnv;
use sqlx::{
    PgPool,
    migrate::{Migration, MigrationType, Migrator},
};

/// The newest migration that existed when the sets were split; later ones are new to a
/// database migrated then.
const SPLIT_LAST: i64 = 1420;

/// The one set every service applied before the split: the projector's, with the webhook
/// tables in it. The files moved unchanged, so it is the union of today's sets up to the split.
fn before_the_split() -> Migrator {
    let mut migrations: Vec<Migration> = READ_MODEL
        .iter()
        .chain(WEBHOOKS.iter())
        .filter(|m| m.version <= SPLIT_LAST)
        .cloned()
        .collect();
    migrations.sort_by_key(|m| m.version);
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

async fn recorded(pg: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(pg)
        .await
        .expect("recorded migrations")
}

async fn table_exists(pg: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(pg)
        .await
        .expect("to_regclass")
}

#[tokio::test]
async fn a_database_migrated_before_the_split_upgrades_with_nothing_to_do() {
    let env = TestEnv::start().await.expect("env");
    let pg = env.pg().await.expect("pg");
    let old = before_the_split();
    let versions: Vec<i64> = old.iter().map(|m| m.version).collect();
    assert_eq!(
        versions,
        [1, 600, 1000, 1100, 1200, 1300, 1420],
        "the set as it shipped"
    );
    old.run(&pg).await.expect("the old set");
    let before = recorded(&pg).await;

    READ_MODEL
        .run(&pg)
        .await
        .expect("the projector's set after the old one");
    WEBHOOKS
        .run(&pg)
        .await
        .expect("the webhooks' set after the old one");
    let mut want = before.clone();
    want.extend(
        READ_MODEL
            .iter()
            .chain(WEBHOOKS.iter())
            .map(|m| m.version)
            .filter(|v| *v > SPLIT_LAST),
    );
    want.sort_unstable();
    assert_eq!(
        recorded(&pg).await,
        want,
        "nothing applied twice, only what came after the split"
    );

    // A replica not yet upgraded still starts. The pre-split set was strict about versions it
    // does not know, which migrations added since the split now are; the sets of the split's
    // release on ignore them (`schema::owned`), as this one does.
    let mut old = old;
    old.set_ignore_missing(true);
    old.run(&pg).await.expect("the old set after the new ones");

    // Provisioning adds only the sets made after the split (ingest's consent records).
    schema::migrate_all(&pg)
        .await
        .expect("provisioning after the old one");
    let mut expected = want;
    expected.extend(schema::CONSENTS.iter().map(|m| m.version));
    expected.sort_unstable();
    assert_eq!(recorded(&pg).await, expected, "nothing applied twice");
}

#[tokio::test]
async fn each_service_migrates_its_own_tables_in_either_order() {
    let env = TestEnv::start().await.expect("env");
    let pg = env.pg().await.expect("pg");
    WEBHOOKS.run(&pg).await.expect("webhooks first");
    assert!(table_exists(&pg, "webhook_messages").await);
    assert!(table_exists(&pg, "webhook_leases").await);
    assert!(
        !table_exists(&pg, "calls").await,
        "the read model is not the webhooks' to create"
    );

    READ_MODEL.run(&pg).await.expect("then the projector");
    assert!(table_exists(&pg, "calls").await);
    let mut every: Vec<i64> = READ_MODEL
        .iter()
        .chain(WEBHOOKS.iter())
        .map(|m| m.version)
        .collect();
    every.sort_unstable();
    assert_eq!(recorded(&pg).await, every, "both sets, each version once");
}

#[tokio::test]
async fn a_migration_added_to_one_set_does_not_stop_the_other_service() {
    let env = TestEnv::start().await.expect("env");
    let pg = env.pg().await.expect("pg");
    // A newer projector with a migration the running webhooks replicas do not know.
    let mut newer: Vec<Migration> = READ_MODEL.iter().cloned().collect();
    newer.push(Migration::new(
        9_999_000,
        "a later read-model change".into(),
        MigrationType::Simple,
        "CREATE TABLE later_read_model_change (id int)".into(),
        false,
    ));
    let newer_projector = Migrator {
        migrations: Cow::Owned(newer),
        ignore_missing: true,
        ..Migrator::DEFAULT
    };
    newer_projector.run(&pg).await.expect("newer projector");
    WEBHOOKS
        .run(&pg)
        .await
        .expect("webhooks ignore the projector's versions");
    READ_MODEL
        .run(&pg)
        .await
        .expect("an older projector replica too");
}
