//! Each service migrates its own tables (`ccm_core::schema`), and a database migrated before
//! the sets were split upgrades cleanly.

use std::borrow::Cow;

use ccm_core::schema::{self, READ_MODEL, WEBHOOKS};
use ccm_tests::TestEnv;
use sqlx::{
    PgPool,
    migrate::{Migration, MigrationType, Migrator},
};

/// The one set every service applied before the split: the projector's, with the webhook
/// tables in it. The files moved unchanged, so it is the union of today's sets.
fn before_the_split() -> Migrator {
    let mut migrations: Vec<Migration> =
        READ_MODEL.iter().chain(WEBHOOKS.iter()).cloned().collect();
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
    assert_eq!(
        recorded(&pg).await,
        before,
        "nothing applied twice, nothing new"
    );

    // A replica not yet upgraded (the old set, strict about unknown versions) still starts.
    old.run(&pg).await.expect("the old set after the new ones");

    // Provisioning adds only the sets made after the split (ingest's consent records).
    schema::migrate_all(&pg)
        .await
        .expect("provisioning after the old one");
    let mut expected = before;
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
    assert_eq!(
        recorded(&pg).await,
        before_the_split()
            .iter()
            .map(|m| m.version)
            .collect::<Vec<_>>()
    );
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
