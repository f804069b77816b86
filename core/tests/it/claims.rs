//! Number claims live exactly as long as their call (issue 16 item 7, issue 18 item 3):
//! a pending claim frees itself after its (small, configured) TTL, a bound one outlives any
//! TTL, a release survives a paused server, and the reaper frees claims of ended calls and
//! never a live call's. Durations are made small through [`ClaimSettings`].

use std::time::Duration;

use async_nats::jetstream;
use ccm_core::{
    CallEvent, CallId, CampaignId, DialRequest, EventKind, PhoneNumber, PhoneRule,
    claims::{ClaimError, ClaimSettings, Claims, Phase, Slot},
    config::{DuplicateScope, StreamSettings},
    topology::Topology,
};
use ccm_tests::{TestEnv, eventually};
use chrono::Utc;

const GLOBAL: DuplicateScope = DuplicateScope::Global;

fn settings(pending_secs: u64) -> ClaimSettings {
    ClaimSettings {
        pending_ttl: Duration::from_secs(pending_secs),
        window: Duration::from_secs(60),
    }
}

async fn open(env: &TestEnv, pending_secs: u64) -> (jetstream::Context, Claims) {
    open_with(env, settings(pending_secs)).await
}

async fn open_with(env: &TestEnv, settings: ClaimSettings) -> (jetstream::Context, Claims) {
    let js = env.jetstream().await.expect("js");
    Topology::load(&StreamSettings::default())
        .expect("topology")
        .provision(&js)
        .await
        .expect("provision");
    let claims = Claims::open(js.clone(), settings).await.expect("claims");
    (js, claims)
}

fn phone(n: u64) -> PhoneNumber {
    PhoneNumber::parse(&format!("+1555800{n:04}"), PhoneRule::Lenient).expect("phone")
}

fn campaign() -> CampaignId {
    CampaignId::new(7).expect("id")
}

async fn event(js: &jetstream::Context, call: CallId, kind: EventKind) {
    let event = CallEvent {
        call_id: call,
        campaign_id: campaign(),
        attempt: 1,
        at: Utc::now(),
        kind,
    };
    ccm_core::nats::publish_event(js, &event)
        .await
        .expect("event");
}

fn dialing(n: u64) -> EventKind {
    EventKind::Dialing {
        phone_number: phone(n),
        max_attempts: 1,
        created_at: Utc::now(),
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
    }
}

async fn publish_dial(js: &jetstream::Context, call: CallId, n: u64) {
    let request = DialRequest {
        call_id: call,
        campaign_id: campaign(),
        phone_number: phone(n),
        attempt: 1,
        max_attempts: 1,
        created_at: Utc::now(),
        queued_at: Utc::now(),
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
        callback: None,
    };
    ccm_core::nats::publish_dial(js, &request)
        .await
        .expect("dial");
}

#[tokio::test]
async fn a_pending_claim_never_bound_frees_itself_after_its_ttl() {
    let env = TestEnv::start().await.expect("env");
    let (_, claims) = open(&env, 1).await;
    // A writer that claimed and died before publishing (nothing binds, nothing releases).
    let leaked = claims
        .claim(GLOBAL, campaign(), &phone(1), CallId::new())
        .await
        .expect("claim");
    drop(leaked);
    let blocked = claims
        .claim(GLOBAL, campaign(), &phone(1), CallId::new())
        .await;
    assert!(
        matches!(blocked, Err(ClaimError::InProgress)),
        "{blocked:?}"
    );
    let freed = eventually(Duration::from_secs(10), || async {
        claims
            .claim(GLOBAL, campaign(), &phone(1), CallId::new())
            .await
            .ok()
    })
    .await;
    assert!(
        freed.is_some(),
        "the leaked claim expired after its 1 s TTL"
    );
}

#[tokio::test]
async fn a_bound_claim_is_held_past_any_ttl_while_its_call_waits() {
    let env = TestEnv::start().await.expect("env");
    let (js, claims) = open(&env, 1).await;
    let bucket = js.get_stream("KV_active_calls").await.expect("bucket");
    assert_eq!(
        bucket.cached_info().config.max_age,
        Duration::ZERO,
        "no bucket-wide age can take a queued call's claim"
    );
    assert!(bucket.cached_info().config.allow_message_ttl);
    let call = CallId::new();
    let claim = claims
        .claim(GLOBAL, campaign(), &phone(2), call)
        .await
        .expect("claim");
    publish_dial(&js, call, 2).await;
    claims.bind(&claim).await.expect("bind");
    // Queued far longer than the pending TTL, with no event yet.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let record = claims.read(&claim.key).await.expect("read");
    assert!(
        matches!(&record.slot, Slot::Held { call: c, phase: Phase::Bound, .. } if *c == call.to_string()),
        "{record:?}"
    );
    let other = claims
        .claim(GLOBAL, campaign(), &phone(2), CallId::new())
        .await;
    assert!(matches!(other, Err(ClaimError::InProgress)), "{other:?}");
    let reaped = claims.reap().await.expect("reap");
    assert_eq!((reaped.released, reaped.purged), (0, 0), "{reaped:?}");
    assert!(
        claims
            .read(&claim.key)
            .await
            .expect("read")
            .held_by_call(call)
    );
}

#[tokio::test]
async fn a_release_during_a_paused_server_is_retried_until_done() {
    let env = TestEnv::start().await.expect("env");
    let pid = env
        .local_nats
        .as_ref()
        .and_then(|n| n.pid())
        .expect("local nats");
    let (_, claims) = open(&env, 30).await;
    // A client whose requests time out fast, so the pause makes the first tries fail.
    let client = async_nats::connect(&env.nats_url).await.expect("connect");
    let quick = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(200))
        .build(client);
    let releaser = Claims::open(quick, settings(30)).await.expect("claims");
    let call = CallId::new();
    let claim = claims
        .claim(GLOBAL, campaign(), &phone(3), call)
        .await
        .expect("claim");
    claims.bind(&claim).await.expect("bind");
    signal(pid, "STOP");
    let release = tokio::spawn(async move {
        releaser
            .release(campaign(), &phone(3), call, Utc::now())
            .await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !release.is_finished(),
        "the release cannot finish while the server is paused"
    );
    signal(pid, "CONT");
    tokio::time::timeout(Duration::from_secs(20), release)
        .await
        .expect("the release finished once the server was back")
        .expect("task");
    let record = claims.read(&claim.key).await.expect("read");
    assert!(
        matches!(&record.slot, Slot::Released { call: Some(c), .. } if *c == call.to_string()),
        "released, with the marker the window counts from: {record:?}"
    );
    let again = claims
        .claim(GLOBAL, campaign(), &phone(3), CallId::new())
        .await;
    assert!(matches!(again, Err(ClaimError::WithinWindow)), "{again:?}");
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A seeded random interleaving of claim, publish, bind, end, release and reap over a few
/// numbers, checked after every reap: a published call that has not ended keeps its claim;
/// a claim of an ended call is gone after a reap; a number is never held by two calls.
#[tokio::test]
async fn generated_interleavings_never_free_a_live_calls_claim_and_reap_ended_ones() {
    let env = TestEnv::start().await.expect("env");
    // No window, so a number whose call ended can be claimed again at once.
    let (js, claims) = open_with(
        &env,
        ClaimSettings {
            pending_ttl: Duration::from_secs(8),
            window: Duration::ZERO,
        },
    )
    .await;
    let seed = std::env::var("CCM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_micros() as u64 | 1);
    println!("seed {seed} (CCM_SEED={seed} replays it)");
    let mut rng = seed;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum State {
        Claimed,
        Published,
        Bound,
        Ended,
        Released,
    }
    // Per number: the call that last claimed it and how far it got.
    let mut calls: Vec<Option<(CallId, ccm_core::claims::Claim, State)>> = vec![None; 4];
    for step in 0..60 {
        let n = next(4) as usize;
        let op = next(6);
        let number = 100 + n as u64;
        match (op, calls[n].clone()) {
            (0, None) | (0, Some((_, _, State::Released))) => {
                let call = CallId::new();
                match claims.claim(GLOBAL, campaign(), &phone(number), call).await {
                    Ok(claim) => calls[n] = Some((call, claim, State::Claimed)),
                    Err(ClaimError::WithinWindow) => {}
                    Err(e) => panic!("step {step}: claim of a free number: {e:?}"),
                }
            }
            (1, Some((call, claim, State::Claimed))) => {
                publish_dial(&js, call, number).await;
                calls[n] = Some((call, claim, State::Published));
            }
            (2, Some((call, claim, State::Published))) => {
                claims.bind(&claim).await.expect("bind");
                calls[n] = Some((call, claim, State::Bound));
            }
            (3, Some((call, claim, State::Bound | State::Published))) => {
                event(&js, call, dialing(number)).await;
                if next(2) == 0 {
                    event(&js, call, EventKind::Completed).await;
                    calls[n] = Some((call, claim, State::Ended));
                }
            }
            (4, Some((call, claim, State::Ended))) => {
                claims
                    .release(campaign(), &phone(number), call, Utc::now())
                    .await;
                calls[n] = Some((call, claim, State::Released));
            }
            (5, _) => {
                // Two walks: the first may only bind a pending claim whose call ended in the
                // second it was claimed (the end is not provably after the claim).
                claims.reap().await.expect("reap");
                claims.reap().await.expect("reap");
                for (i, slot) in calls.iter_mut().enumerate() {
                    let Some((call, claim, state)) = slot.clone() else {
                        continue;
                    };
                    let record = claims.read(&claim.key).await.expect("read");
                    let held = record.held_by_call(call);
                    match state {
                        State::Published | State::Bound => assert!(
                            held,
                            "seed {seed} step {step}: live call {i} lost its claim: {record:?}"
                        ),
                        State::Ended => {
                            // A young pending claim is its writer's to bind or give back (and
                            // its TTL's to end): only a bound one is the reaper's to free.
                            let pending = matches!(
                                record.slot,
                                Slot::Held {
                                    phase: Phase::Pending,
                                    ..
                                }
                            );
                            assert!(
                                !held || pending,
                                "seed {seed} step {step}: ended call {i} kept its claim: {record:?}"
                            );
                            if !held {
                                *slot = Some((call, claim, State::Released));
                            }
                        }
                        State::Claimed | State::Released => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// A writer that published its call and died before binding: the reaper finds the dial
/// message in `CALLS` and binds the claim before its TTL runs out, so the queued call keeps
/// its number; once the call ends, the reaper frees the number.
#[tokio::test]
async fn the_reaper_binds_a_published_calls_claim_and_frees_it_when_the_call_ends() {
    let env = TestEnv::start().await.expect("env");
    let (js, claims) = open(&env, 4).await;
    let call = CallId::new();
    let claim = claims
        .claim(GLOBAL, campaign(), &phone(5), call)
        .await
        .expect("claim");
    publish_dial(&js, call, 5).await;
    // Past a quarter of the TTL the claim is no longer its writer's business.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reaped = claims.reap().await.expect("reap");
    assert_eq!(reaped.bound, 1, "{reaped:?}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        claims
            .read(&claim.key)
            .await
            .expect("read")
            .held_by_call(call),
        "bound, the claim outlived its pending TTL"
    );
    event(&js, call, dialing(5)).await;
    event(&js, call, EventKind::Completed).await;
    let reaped = claims.reap().await.expect("reap");
    assert_eq!(reaped.released, 1, "{reaped:?}");
    let record = claims.read(&claim.key).await.expect("read");
    assert!(
        matches!(record.slot, Slot::Released { .. }),
        "released with a window marker: {record:?}"
    );
}

/// A deployment upgraded from buckets with a 48 h `max_age` and no per-message TTLs gets
/// both changed in place by provisioning (the server turns TTLs on for an existing stream).
#[tokio::test]
async fn provisioning_turns_an_old_claims_bucket_into_one_with_per_key_ttls() {
    let env = TestEnv::start().await.expect("env");
    let js = env.jetstream().await.expect("js");
    let topology = Topology::load(&StreamSettings::default()).expect("topology");
    for name in ["KV_active_calls", "KV_idempotency"] {
        let mut old = crate::provisioning::defined_stream(name);
        old.allow_message_ttl = false;
        old.subject_delete_marker_ttl = None;
        old.max_age = Duration::from_secs(48 * 3600);
        js.create_stream(old).await.expect("old bucket");
    }
    let report = topology.provision(&js).await.expect("provision");
    assert!(report.drift.is_empty(), "{report:?}");
    for name in ["KV_active_calls", "KV_idempotency"] {
        assert!(
            report.updated.contains(&format!("stream {name}")),
            "{report:?}"
        );
        let config = js
            .get_stream(name)
            .await
            .expect("stream")
            .cached_info()
            .config
            .clone();
        assert!(
            config.allow_message_ttl
                && config.subject_delete_marker_ttl.is_some()
                && config.max_age == Duration::ZERO,
            "{config:?}"
        );
    }
}
