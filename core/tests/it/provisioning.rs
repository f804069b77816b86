//! Provisioning is idempotent: create if absent, update compatible changes, report (never
//! fix or delete) incompatible drift.

use async_nats::jetstream::stream;
use ccm_core::{
    Campaign, CampaignId, CampaignState,
    config::StreamSettings,
    dial_consumer::DialConsumers,
    topology::{STREAMS, Topology, names},
};
use ccm_tests::TestEnv;

#[tokio::test]
async fn provisioning_twice_changes_nothing_the_second_time() {
    let env = TestEnv::start().await.expect("env");
    let js = env.jetstream().await.expect("js");
    let topology = Topology::load(&StreamSettings::default()).expect("topology");

    let first = topology.provision(&js).await.expect("first");
    assert_eq!(
        first.created.len(),
        topology.streams.len() + topology.buckets.len() + topology.consumers.len(),
        "{first:?}"
    );
    assert!(
        first.drift.is_empty() && first.updated.is_empty(),
        "{first:?}"
    );

    let second = topology.provision(&js).await.expect("second");
    assert!(
        second.created.is_empty() && second.updated.is_empty(),
        "{second:?}"
    );
    assert_eq!(second.unchanged.len(), first.created.len());

    // Each bucket, made by async-nats's `create_key_value`, is exactly the stream its file in
    // `nats/` defines (what `nats stream add --config` would make), duplicate window included.
    for bucket in &topology.buckets {
        let name = format!("KV_{}", bucket.bucket);
        let file = defined_stream(&name);
        let made = js
            .get_stream(&name)
            .await
            .expect(&name)
            .cached_info()
            .config
            .clone();
        let fields = |c: &stream::Config| {
            (
                c.subjects.clone(),
                c.max_messages_per_subject,
                c.max_age,
                c.max_bytes,
                c.max_message_size,
                c.storage,
                c.discard,
                c.duplicate_window,
                (c.deny_delete, c.deny_purge, c.allow_rollup, c.allow_direct),
                (c.allow_message_ttl, c.subject_delete_marker_ttl),
                c.description.clone(),
            )
        };
        assert_eq!(fields(&made), fields(&file), "{name}");
    }

    for bucket in [
        names::KV_CAMPAIGNS,
        names::KV_ACTIVE_CALLS,
        names::KV_COUNTERS,
    ] {
        let kv = js.get_key_value(bucket).await.expect(bucket);
        kv.put("probe", "1".into()).await.expect("put");
        assert_eq!(
            kv.get("probe").await.expect("get").as_deref(),
            Some(&b"1"[..])
        );
    }
}

#[tokio::test]
async fn compatible_changes_are_applied_in_place() {
    let env = TestEnv::start().await.expect("env");
    let js = env.jetstream().await.expect("js");
    Topology::load(&StreamSettings::default())
        .expect("t")
        .provision(&js)
        .await
        .expect("p");

    let longer = StreamSettings {
        max_age_days: 14,
        ..StreamSettings::default()
    };
    let report = Topology::load(&longer)
        .expect("t")
        .provision(&js)
        .await
        .expect("provision again");
    assert!(
        report.updated.contains(&"stream CALLS".to_owned()),
        "{report:?}"
    );
    assert!(report.drift.is_empty(), "{report:?}");
    let mut calls = js.get_stream(names::CALLS).await.expect("CALLS");
    let max_age = calls.info().await.expect("info").config.max_age;
    assert_eq!(max_age, std::time::Duration::from_secs(14 * 86_400));
}

/// `CALLS` made by an earlier version with `max_consumers: -1`: on nats-server 2.15 that means
/// the default 1,000 and the limit can be raised in place, so provisioning raises it; on an
/// older server it means unlimited and the server refuses the change, so it is left alone
/// (and provisioning still succeeds).
#[tokio::test]
async fn an_earlier_calls_stream_gets_the_consumer_limit_where_the_server_needs_it() {
    let env = TestEnv::start().await.expect("env");
    let js = env.jetstream().await.expect("js");
    let wanted: stream::Config = serde_json::from_str(
        STREAMS
            .iter()
            .find(|d| d.path.ends_with("CALLS.json"))
            .expect("CALLS")
            .json,
    )
    .expect("CALLS");
    js.create_stream(stream::Config {
        max_consumers: -1,
        ..wanted.clone()
    })
    .await
    .expect("the earlier CALLS");
    Topology::load(&StreamSettings::default())
        .expect("t")
        .provision(&js)
        .await
        .expect("provisioning over the earlier stream");
    let version = js.client().server_info().version;
    let limits = ccm_core::server_version::Version::parse(&version)
        .is_some_and(|v| v >= ccm_core::server_version::DEFAULT_CONSUMER_LIMIT);
    let mut calls = js.get_stream(names::CALLS).await.expect("CALLS");
    let got = calls.info().await.expect("info").config.max_consumers;
    let expected = if limits { wanted.max_consumers } else { -1 };
    assert_eq!(got, expected, "on nats-server {version}");
}

#[tokio::test]
async fn incompatible_drift_is_reported_and_left_alone() {
    let env = TestEnv::start().await.expect("env");
    let js = env.jetstream().await.expect("js");
    // Someone created RETRIES by hand with the wrong retention and a message in it.
    js.create_stream(stream::Config {
        name: names::RETRIES.into(),
        subjects: vec!["calls.retry.>".into()],
        retention: stream::RetentionPolicy::Limits,
        ..Default::default()
    })
    .await
    .expect("create by hand");
    js.publish("calls.retry.1", "keep me".into())
        .await
        .expect("publish")
        .await
        .expect("ack");

    let topology = Topology::load(&StreamSettings::default()).expect("topology");
    let report = topology.provision(&js).await.expect("provision");
    let drift: Vec<_> = report
        .drift
        .iter()
        .filter(|d| d.object == "stream RETRIES")
        .collect();
    assert_eq!(drift.len(), 1, "{report:?}");
    assert_eq!(drift[0].field, "retention");

    let mut retries = js.get_stream(names::RETRIES).await.expect("still there");
    let info = retries.info().await.expect("info");
    assert_eq!(
        info.config.retention,
        stream::RetentionPolicy::Limits,
        "not changed"
    );
    assert_eq!(info.state.messages, 1, "nothing deleted");
}

/// A stream as its file in `nats/streams` defines it.
pub(crate) fn defined_stream(name: &str) -> stream::Config {
    let def = STREAMS
        .iter()
        .find(|d| d.path == format!("streams/{name}.json"))
        .expect(name);
    serde_json::from_str(def.json).expect(def.path)
}

/// Deployments provisioned by earlier versions have their buckets as streams made by hand
/// (the nats-server 2.9 workaround, without limit markers, some allowing message deletes).
/// Provisioning them as buckets keeps every key and turns them into what `create_key_value`
/// makes: no drift, per-key TTLs still accepted, and nothing left to change afterwards.
#[tokio::test]
async fn buckets_made_as_streams_by_earlier_versions_keep_their_keys() {
    let env = TestEnv::start().await.expect("env");
    let js = env.jetstream().await.expect("js");
    let topology = Topology::load(&StreamSettings::default()).expect("topology");
    for bucket in &topology.buckets {
        // The definition as the previous version provisioned it, by `create_stream`.
        let mut old = defined_stream(&format!("KV_{}", bucket.bucket));
        old.subject_delete_marker_ttl = None;
        if matches!(bucket.bucket.as_str(), "attempts" | "pacing" | "placements") {
            old.deny_delete = false;
        }
        js.create_stream(old).await.expect("old bucket");
        let kv = js.get_key_value(&bucket.bucket).await.expect("open");
        kv.put("kept", bucket.bucket.clone().into())
            .await
            .expect("put");
    }
    let ttl = Some(std::time::Duration::from_secs(3600));
    ccm_core::kv_ttl::put(&js, names::KV_ACTIVE_CALLS, "ttl", "x".into(), None, ttl)
        .await
        .expect("a per-key TTL before");

    let report = topology.provision(&js).await.expect("provision");
    assert!(report.drift.is_empty(), "{report:?}");
    for name in [
        "KV_active_calls",
        "KV_idempotency",
        "KV_attempts",
        "KV_pacing",
        "KV_placements",
    ] {
        assert!(
            report.updated.contains(&format!("stream {name}")),
            "{name}: {report:?}"
        );
    }
    for bucket in &topology.buckets {
        let kv = js.get_key_value(&bucket.bucket).await.expect("open");
        assert_eq!(
            kv.get("kept").await.expect("get").as_deref(),
            Some(bucket.bucket.as_bytes()),
            "{}",
            bucket.bucket
        );
    }
    for bucket in [names::KV_ACTIVE_CALLS, names::KV_IDEMPOTENCY] {
        ccm_core::kv_ttl::put(&js, bucket, "ttl2", "x".into(), None, ttl)
            .await
            .expect("a per-key TTL after");
    }
    let again = topology.provision(&js).await.expect("again");
    assert!(
        again.updated.is_empty() && again.drift.is_empty() && again.created.is_empty(),
        "{again:?}"
    );
}

/// A bucket whose stream cannot become what the definition says is reported, not replaced.
#[tokio::test]
async fn a_bucket_on_other_storage_is_reported_as_drift() {
    let env = TestEnv::start().await.expect("env");
    let js = env.jetstream().await.expect("js");
    let mut memory = defined_stream("KV_counters");
    memory.storage = stream::StorageType::Memory;
    js.create_stream(memory).await.expect("by hand");
    let report = Topology::load(&StreamSettings::default())
        .expect("topology")
        .provision(&js)
        .await
        .expect("provision");
    assert_eq!(
        report
            .drift
            .iter()
            .map(|d| (d.object.as_str(), d.field))
            .collect::<Vec<_>>(),
        [("stream KV_counters", "storage")],
        "{report:?}"
    );
}

pub(crate) fn campaign(id: u64, cap: u32) -> Campaign {
    let now = chrono::Utc::now();
    Campaign {
        id: CampaignId::new(id).expect("id"),
        name: "c".into(),
        description: String::new(),
        is_active: true,
        state: CampaignState::Running,
        max_concurrent_calls: cap,
        max_attempts: 1,
        retry_policy: None,
        created_at: now,
        updated_at: now,
        time_zone: None,
        calling_window: None,
        calling_hours: None,
        blackout_dates: Vec::new(),
        max_call_duration_secs: None,
        starts_at: None,
        ends_at: None,
        complete_when_empty: false,
        answering_machine: Default::default(),
        max_calls_per_second: None,
        purpose: Default::default(),
        ring_timeout_secs: None,
        required_consent: None,
        opt_out_list: Default::default(),
        caller_id_pool: None,
        carrier_weight: None,
        alternate_numbers: None,
        ended_at: None,
    }
}

/// The cap and the pause follow the document; a cap change while paused keeps the pause
/// (an update of the consumer must never resume a held campaign).
#[tokio::test]
async fn a_campaigns_dial_consumer_follows_its_cap_and_pause() {
    let env = TestEnv::start().await.expect("env");
    let js = env.jetstream().await.expect("js");
    let topology = Topology::load(&StreamSettings::default()).expect("topology");
    topology.provision(&js).await.expect("provision");
    let consumers = DialConsumers::new(&js, &topology).await;
    let stream = js.get_stream(names::CALLS).await.expect("CALLS");

    let mut doc = campaign(5, 20);
    doc.state = CampaignState::Paused;
    let created = consumers.ensure(&doc).await.expect("create");
    assert!(created.plan.create, "{created:?}");
    let info = stream.consumer_info("dial_5").await.expect("consumer");
    assert!(info.paused, "born paused");
    assert_eq!(info.config.filter_subject, "calls.dial.5");

    doc.max_concurrent_calls = 7;
    let updated = consumers.ensure(&doc).await.expect("update");
    assert!(
        updated.plan.update && updated.plan.pause.is_none(),
        "{updated:?}"
    );
    let info = stream.consumer_info("dial_5").await.expect("consumer");
    assert_eq!(info.config.max_ack_pending, 7);
    assert!(info.paused, "still paused after the cap change");

    doc.state = CampaignState::Running;
    consumers.ensure(&doc).await.expect("resume");
    let info = stream.consumer_info("dial_5").await.expect("consumer");
    assert!(!info.paused);
    let again = consumers.ensure(&doc).await.expect("again");
    assert!(again.plan.is_empty(), "nothing left to do: {again:?}");
}

/// Provisioning reads the version from the server's `INFO` and refuses one older than the
/// minimum before it sends a single JetStream request. No release older than 2.11 is
/// installed here, so the "server" is the start of the NATS protocol as 2.9.10 speaks it:
/// its `INFO`, then `PONG` to every `PING`; every other line is recorded.
#[tokio::test]
async fn a_server_older_than_the_minimum_is_refused_naming_both_versions() {
    use tokio::{
        io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
        net::TcpListener,
    };

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        let (read, mut write) = socket.into_split();
        let info = format!(
            "INFO {{\"server_id\":\"OLD\",\"version\":\"2.9.10\",\"proto\":1,\"headers\":true,\
             \"jetstream\":true,\"max_payload\":1048576,\"host\":\"127.0.0.1\",\"port\":{port}}}\r\n"
        );
        write.write_all(info.as_bytes()).await.expect("info");
        let mut lines = BufReader::new(read).lines();
        let mut requests = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line == "PING" {
                write.write_all(b"PONG\r\n").await.expect("pong");
            } else if line.starts_with("PUB ") || line.starts_with("HPUB ") {
                requests.push(line);
            }
        }
        requests
    });

    let client = ccm_core::nats::connect(&format!("nats://127.0.0.1:{port}"), "test")
        .await
        .expect("connect");
    let js = ccm_core::nats::jetstream(client.clone());
    let err = Topology::load(&StreamSettings::default())
        .expect("topology")
        .provision(&js)
        .await
        .expect_err("2.9.10 is refused");
    let message = err.to_string();
    assert!(
        matches!(
            err,
            ccm_core::topology::TopologyError::UnsupportedServer(
                ccm_core::server_version::UnsupportedServer::TooOld { .. }
            )
        ),
        "{err:?}"
    );
    assert!(
        message.contains("2.9.10") && message.contains("2.11.0"),
        "{message}"
    );

    drop(js);
    drop(client);
    let requests = tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("the client disconnects")
        .expect("fake server");
    assert!(requests.is_empty(), "provisioning sent {requests:?}");
}
