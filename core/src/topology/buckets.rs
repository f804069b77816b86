//! KV buckets, provisioned as buckets.
//!
//! Each bucket is defined in `nats/streams/KV_<bucket>.json` as the stream a KV bucket is
//! (`nats stream add --config` applies it as it is, and `nats kv` sees a bucket): the file is
//! read into the bucket's [`kv::Config`] ([`bucket_config`]), which is what provisioning hands
//! to async-nats's `create_key_value` / `update_key_value`. A file that is not exactly a KV
//! bucket's stream (its subjects, rollups, direct gets, per-key TTL only with limit markers…)
//! does not load, so the two ways of applying it cannot disagree.
//!
//! Deployments provisioned before (the buckets hand-made as streams, a nats-server 2.9
//! workaround) keep their streams and data: the stream is the bucket, and an update only
//! changes the settings that differ.

use async_nats::jetstream::{self, kv, stream};

use super::{Drift, Report, TopologyError};

/// Why a `KV_*.json` file is not a KV bucket's stream.
#[derive(Debug, thiserror::Error)]
#[error("{field} is {actual}, a KV bucket's stream has {wanted}")]
pub struct NotABucket {
    pub field: &'static str,
    pub wanted: String,
    pub actual: String,
}

/// The bucket a `KV_<bucket>` stream definition describes.
pub(crate) fn bucket_config(config: &stream::Config) -> Result<kv::Config, NotABucket> {
    let bucket = config.name.strip_prefix("KV_").unwrap_or(&config.name);
    let kv = kv::Config {
        bucket: bucket.to_owned(),
        description: config.description.clone().unwrap_or_default(),
        max_value_size: config.max_message_size,
        history: config.max_messages_per_subject,
        max_age: config.max_age,
        max_bytes: config.max_bytes,
        storage: config.storage,
        num_replicas: config.num_replicas,
        // Per-key TTLs come with limit markers in a KV bucket (async-nats and the NATS CLI
        // turn `allow_msg_ttl` on only together with the markers' TTL).
        limit_markers: config.subject_delete_marker_ttl,
        ..Default::default()
    };
    let mismatches = bucket_mismatches(&kv, config);
    match mismatches.into_iter().next() {
        Some(drift) => Err(NotABucket {
            field: drift.field,
            wanted: drift.wanted,
            actual: drift.actual,
        }),
        None => Ok(kv),
    }
}

/// Where `actual` differs from the stream a bucket of `wanted` is (fields a KV bucket sets;
/// the server fills in the others, e.g. the duplicate window).
fn bucket_mismatches(wanted: &kv::Config, actual: &stream::Config) -> Vec<Drift> {
    let object = format!("bucket {}", wanted.bucket);
    let mut out = Vec::new();
    let mut check = |field, w: String, a: String| {
        if w != a {
            out.push(Drift {
                object: object.clone(),
                field,
                wanted: w,
                actual: a,
            });
        }
    };
    check("name", format!("KV_{}", wanted.bucket), actual.name.clone());
    check(
        "subjects",
        format!("{:?}", [format!("$KV.{}.>", wanted.bucket)]),
        format!("{:?}", actual.subjects),
    );
    check(
        "max_msgs_per_subject",
        wanted.history.max(1).to_string(),
        actual.max_messages_per_subject.to_string(),
    );
    check(
        "max_age",
        format!("{:?}", wanted.max_age),
        format!("{:?}", actual.max_age),
    );
    check(
        "max_bytes",
        wanted.max_bytes.to_string(),
        actual.max_bytes.to_string(),
    );
    check(
        "max_msg_size",
        wanted.max_value_size.to_string(),
        actual.max_message_size.to_string(),
    );
    check(
        "num_replicas",
        wanted.num_replicas.max(1).to_string(),
        actual.num_replicas.to_string(),
    );
    check(
        "description",
        wanted.description.clone(),
        actual.description.clone().unwrap_or_default(),
    );
    check(
        "allow_msg_ttl",
        wanted.limit_markers.is_some().to_string(),
        actual.allow_message_ttl.to_string(),
    );
    check(
        "subject_delete_marker_ttl",
        format!("{:?}", wanted.limit_markers),
        format!("{:?}", actual.subject_delete_marker_ttl),
    );
    check(
        "allow_rollup_hdrs",
        "true".into(),
        actual.allow_rollup.to_string(),
    );
    check("deny_delete", "true".into(), actual.deny_delete.to_string());
    check("deny_purge", "false".into(), actual.deny_purge.to_string());
    check(
        "allow_direct",
        "true".into(),
        actual.allow_direct.to_string(),
    );
    check(
        "discard",
        format!("{:?}", stream::DiscardPolicy::New),
        format!("{:?}", actual.discard),
    );
    check(
        "retention",
        format!("{:?}", stream::RetentionPolicy::Limits),
        format!("{:?}", actual.retention),
    );
    out
}

/// Differences the server cannot apply to an existing bucket's stream.
fn bucket_drift(wanted: &kv::Config, actual: &stream::Config) -> Vec<Drift> {
    let object = format!("stream KV_{}", wanted.bucket);
    let mut drift = Vec::new();
    if actual.retention != stream::RetentionPolicy::Limits {
        drift.push(Drift {
            object: object.clone(),
            field: "retention",
            wanted: format!("{:?}", stream::RetentionPolicy::Limits),
            actual: format!("{:?}", actual.retention),
        });
    }
    if actual.storage != wanted.storage {
        drift.push(Drift {
            object: object.clone(),
            field: "storage",
            wanted: format!("{:?}", wanted.storage),
            actual: format!("{:?}", actual.storage),
        });
    }
    // The server turns per-message TTLs on in place but never off again.
    if actual.allow_message_ttl && wanted.limit_markers.is_none() {
        drift.push(Drift {
            object,
            field: "allow_msg_ttl",
            wanted: "false".into(),
            actual: "true".into(),
        });
    }
    drift
}

/// Creates the bucket, or updates its settings in place; reports what it did.
pub(super) async fn provision_bucket(
    js: &jetstream::Context,
    wanted: &kv::Config,
    report: &mut Report,
) -> Result<(), TopologyError> {
    let name = format!("KV_{}", wanted.bucket);
    super::provision_backed(
        js,
        &name,
        report,
        async {
            js.create_key_value(wanted.clone())
                .await
                .map(drop)
                .map_err(Into::into)
        },
        |actual| {
            let drift = bucket_drift(wanted, actual);
            let differs = !bucket_mismatches(wanted, actual).is_empty();
            (drift, differs)
        },
        async {
            js.update_key_value(wanted.clone())
                .await
                .map(drop)
                .map_err(Into::into)
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{STREAMS, parse};

    fn bucket_streams() -> Vec<stream::Config> {
        STREAMS
            .iter()
            .map(|d| parse::<stream::Config>(d).expect(d.path))
            .filter(|s| s.name.starts_with("KV_"))
            .collect()
    }

    #[test]
    fn every_bucket_file_is_a_kv_buckets_stream() {
        let streams = bucket_streams();
        assert!(streams.len() >= 11, "{}", streams.len());
        for stream in streams {
            let kv = bucket_config(&stream).unwrap_or_else(|e| panic!("{}: {e}", stream.name));
            assert!(
                bucket_mismatches(&kv, &stream).is_empty(),
                "{}",
                stream.name
            );
        }
    }

    /// The buckets holding short-lived keys expire them one by one, with limit markers.
    #[test]
    fn claims_and_idempotency_keys_have_per_key_ttls() {
        for stream in bucket_streams() {
            let kv = bucket_config(&stream).expect("bucket");
            let ttl = matches!(kv.bucket.as_str(), "active_calls" | "idempotency");
            assert_eq!(kv.limit_markers.is_some(), ttl, "{}", kv.bucket);
            assert_eq!(stream.allow_message_ttl, ttl, "{}", kv.bucket);
        }
    }

    /// A hand-made stream that is not what a bucket is does not load, naming the field.
    #[test]
    fn a_stream_that_is_not_a_bucket_is_refused() {
        let mut stream = bucket_streams().remove(0);
        stream.deny_delete = false;
        let e = bucket_config(&stream).expect_err("not a bucket");
        assert_eq!(e.field, "deny_delete");
        let mut stream = bucket_streams().remove(0);
        stream.allow_message_ttl = true;
        stream.subject_delete_marker_ttl = None;
        assert_eq!(
            bucket_config(&stream)
                .expect_err("TTLs without markers")
                .field,
            "allow_msg_ttl"
        );
    }
}
