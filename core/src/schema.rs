//! The PostgreSQL schema: one migration set per owner.
//!
//! | set | owner | files | tables |
//! |---|---|---|---|
//! | [`READ_MODEL`] | ccm-projector | `projector/migrations/` | `calls`, `call_events`, `campaigns`, `phone_numbers`, `dead_letters`, `daily_metrics`, `call_concurrency`, … |
//! | [`WEBHOOKS`] | ccm-webhooks | `webhooks/migrations/` | `webhook_messages`, `webhook_attempts`, `webhook_leases` |
//! | [`CONSENTS`] | ccm-ingest | `ingest/migrations/` | `consents` |
//!
//! Each service applies its own set when it starts (with `provision` on), and the provisioning
//! step ([`migrate_all`]) applies every set, for deployments whose services have no DDL rights.
//! The sets are listed here, beside the topology, because provisioning is the one step that
//! needs them all and no service depends on another's crate.
//!
//! The sets share sqlx's `_sqlx_migrations` table and its advisory lock, so their versions must
//! never collide (checked by a test); each set ignores the versions of the others. A database
//! migrated before the sets were split (when the projector's set also held `1100` and `1300`,
//! the webhook tables) upgrades with nothing to do: the files moved unchanged, so their
//! versions and checksums are the ones already recorded.

use std::sync::LazyLock;

use sqlx::{
    PgPool,
    migrate::{MigrateError, Migrator},
};

/// The read model, owned by the projector.
pub static READ_MODEL: LazyLock<Migrator> =
    LazyLock::new(|| owned(sqlx::migrate!("../projector/migrations")));

/// The webhook queues, delivery log and leases, owned by ccm-webhooks.
pub static WEBHOOKS: LazyLock<Migrator> =
    LazyLock::new(|| owned(sqlx::migrate!("../webhooks/migrations")));

/// The consent records, owned by ingest.
pub static CONSENTS: LazyLock<Migrator> =
    LazyLock::new(|| owned(sqlx::migrate!("../ingest/migrations")));

/// Every set with its owner, in the order provisioning applies them.
pub fn sets() -> [(&'static str, &'static Migrator); 3] {
    [
        ("read model", &READ_MODEL),
        ("webhooks", &WEBHOOKS),
        ("consents", &CONSENTS),
    ]
}

/// A set that tolerates the versions recorded by the other sets in the shared table.
fn owned(mut migrator: Migrator) -> Migrator {
    migrator.set_ignore_missing(true);
    migrator
}

/// Applies every set (the provisioning step).
pub async fn migrate_all(pool: &PgPool) -> Result<(), MigrateError> {
    for (_, set) in sets() {
        set.run(pool).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn no_two_sets_share_a_version() {
        let mut seen = HashSet::new();
        for (owner, set) in sets() {
            for migration in set.iter() {
                assert!(
                    seen.insert(migration.version),
                    "version {} of the {owner} set is taken by another set",
                    migration.version
                );
            }
        }
    }
}
