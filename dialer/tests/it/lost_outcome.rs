//! An outcome published while the dialer is disconnected from NATS is stored in
//! `CALL_EVENTS` but never reaches the dialer's core subscription. The waiting call must find
//! it in the stream (on reconnect, and periodically) and end promptly, not hold its slot until
//! the maximum call duration and end FAILED (`timeout`).
//!
//! The dialer talks to NATS through a TCP proxy the test cuts: the server stays up, so the
//! outcome is published (and stored) exactly while the dialer cannot hear it.

use std::{net::SocketAddr, time::Duration};

use ccm_core::{
    CallEvent, CampaignId, EventKind, OutcomeSource, OutcomeStatus,
    config::{CarrierConfig, HttpCarrierConfig, SecretUrl},
    subjects,
    topology::names,
};
use ccm_tests::{TestEnv, eventually};
use chrono::Utc;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{campaign, dial},
    placements::silent_carrier,
};

/// Forwards connections to `target` until `cut` is set; while it is, every connection is
/// dropped and new ones are closed at once. Returns the proxy's address.
pub(crate) async fn proxy(target: SocketAddr, cut: watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if *cut.borrow() {
                continue;
            }
            let mut cut = cut.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut.wait_for(|cut| *cut) => {}
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_published_while_the_dialer_was_disconnected_ends_its_call_promptly() {
    let env = TestEnv::start().await.expect("env");
    env.provision().await.expect("provision");
    let js = env.jetstream().await.expect("js");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let sim_url = silent_carrier(&shutdown).await;

    let mut config = env.config();
    let target: SocketAddr = config
        .nats_url
        .expose()
        .trim_start_matches("nats://")
        .parse()
        .expect("nats address");
    let (cut, cut_rx) = watch::channel(false);
    let via = proxy(target, cut_rx).await;
    config.nats_url = SecretUrl::new(format!("nats://{via}"));
    config.dialer.carrier = CarrierConfig::Http(HttpCarrierConfig {
        base_url: sim_url.clone().into(),
        ..HttpCarrierConfig::default()
    });

    // The carrier's call lasts a minute and the campaign's maximum is two: only the outcome
    // ends the call early.
    let id = CampaignId::new(90).expect("id");
    let mut doc = campaign(id, 1);
    doc.max_call_duration_secs = Some(120);
    ccm_core::nats::bucket(&js, names::KV_CAMPAIGNS)
        .await
        .expect("bucket")
        .put(
            id.to_string(),
            serde_json::to_vec(&doc).expect("json").into(),
        )
        .await
        .expect("put campaign");
    let request = dial(id, 1);
    ccm_core::nats::publish_dial(&js, &request)
        .await
        .expect("queue call");
    tokio::spawn(ccm_dialer::run(config, shutdown.clone()));

    let events = js.get_stream(names::CALL_EVENTS).await.expect("events");
    eventually(Duration::from_secs(20), || async {
        let dialing = events
            .direct_get_last_for_subject(subjects::event(id, request.call_id))
            .await
            .ok()?;
        let event: CallEvent = serde_json::from_slice(&dialing.payload).ok()?;
        matches!(event.kind, EventKind::Dialing { .. }).then_some(())
    })
    .await
    .expect("the call is placed");
    // Give the placement a moment to finish: the call is then waiting for its outcome.
    tokio::time::sleep(Duration::from_millis(500)).await;

    cut.send_replace(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcome = CallEvent {
        call_id: request.call_id,
        campaign_id: id,
        attempt: request.attempt,
        at: Utc::now(),
        kind: EventKind::Outcome {
            status: OutcomeStatus::Picked,
            source: OutcomeSource::Carrier,
            raw_status: None,
            duration_secs: Some(3),
            external_call_id: None,
            reason: None,
            callback: None,
        },
    };
    ccm_core::nats::publish_event(&js, &outcome)
        .await
        .expect("outcome stored while the dialer is cut off");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restored = std::time::Instant::now();
    cut.send_replace(false);

    let calls = js.get_stream(names::CALLS).await.expect("CALLS");
    eventually(Duration::from_secs(30), || async {
        let info = calls
            .consumer_info(subjects::dial_consumer(id))
            .await
            .ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await
    .expect("the call ends by its outcome, well before its 120 s maximum duration");
    println!("call ended {:?} after the reconnect", restored.elapsed());
    let last = events
        .direct_get_last_for_subject(subjects::outcome(id, request.call_id))
        .await
        .expect("outcome");
    let last: CallEvent = serde_json::from_slice(&last.payload).expect("event");
    assert!(
        matches!(
            last.kind,
            EventKind::Outcome {
                status: OutcomeStatus::Picked,
                ..
            }
        ),
        "the carrier's outcome stands, no synthetic one: {last:?}"
    );
}
