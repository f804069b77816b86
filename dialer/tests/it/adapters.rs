//! Each adapter's placement and how it sorts the carrier's answers: placed, refused (4xx →
//! the attempt ends FAILED), unavailable (5xx or unreachable → redelivery), ambiguous (a
//! timeout → never placed again).

use std::sync::Arc;

use ccm_carrier_sim::SimConfig;
use ccm_core::{
    CallId, CampaignId, DialRequest, PhoneNumber, PhoneRule,
    campaign::Purpose,
    config::{HttpCarrierConfig, Secret, TwilioCarrierConfig},
};
use ccm_dialer::carrier::{
    CampaignInfo, Carrier, CarrierError, http::HttpCarrier, twilio::TwilioCarrier,
};
use chrono::Utc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The calls' maximum duration, Twilio's `TimeLimit`.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

struct Sim {
    url: String,
    shutdown: CancellationToken,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn sim(config: SimConfig) -> Sim {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    // Callbacks go nowhere here (the callback base is closed); only placement is tested.
    let config = SimConfig {
        callback_base: "http://127.0.0.1:9".into(),
        call_ms: 60_000,
        ..config
    };
    tokio::spawn(ccm_carrier_sim::run(config, listener, shutdown.clone()));
    Sim { url, shutdown }
}

fn request() -> DialRequest {
    let now = Utc::now();
    DialRequest {
        call_id: CallId::new(),
        campaign_id: CampaignId::new(7).expect("id"),
        phone_number: PhoneNumber::parse("+15550001234", PhoneRule::Lenient).expect("phone"),
        attempt: 2,
        max_attempts: 3,
        created_at: now,
        queued_at: now,
        custom_fields: Default::default(),
        expires_at: None,
        alternate: None,
        callback: None,
    }
}

fn campaign() -> CampaignInfo {
    CampaignInfo {
        name: Arc::from("spring"),
        window: None,
        max_calls_per_second: None,
        carrier_weight: 1,
        purpose: Purpose::Informational,
        ring_timeout_secs: None,
        revision: 0,
        required_consent: None,
        caller_id_pool: None,
    }
}

fn http(base_url: &str, timeout_ms: u64) -> HttpCarrier {
    HttpCarrier::new(HttpCarrierConfig {
        base_url: base_url.into(),
        api_token: Secret::default(),
        request_timeout_ms: timeout_ms,
        ring_timeout_secs: None,
    })
    .expect("adapter")
}

async fn stats(url: &str) -> ccm_carrier_sim::ledger::Stats {
    reqwest::get(format!("{url}/stats"))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn the_http_adapter_places_with_the_attempt_as_idempotency_key() {
    let sim = sim(SimConfig::default()).await;
    let call = request();
    let placement = http(&sim.url, 2000)
        .place(&call, &campaign(), None, LIMIT)
        .await
        .expect("placed");
    let stats = stats(&sim.url).await;
    let attempt = &stats.attempts[&call.msg_id()];
    assert_eq!(
        placement.external_call_id.as_deref(),
        Some(attempt.external_call_id.as_str())
    );
    assert_eq!(
        (attempt.campaign.as_str(), attempt.to.as_str()),
        ("7", "+15550001234")
    );
    assert_eq!(attempt.requests, 1);
}

#[tokio::test]
async fn the_http_adapter_sorts_refusals_outages_and_timeouts() {
    let refusing = sim(SimConfig {
        reject_rate: 1.0,
        ..SimConfig::default()
    })
    .await;
    let err = http(&refusing.url, 2000)
        .place(&request(), &campaign(), None, LIMIT)
        .await
        .expect_err("4xx");
    assert!(
        matches!(&err, CarrierError::Rejected(r) if r.starts_with("400") && r.contains("not reachable")),
        "{err:?}"
    );

    let failing = sim(SimConfig {
        fail_first: 1,
        ..SimConfig::default()
    })
    .await;
    let err = http(&failing.url, 2000)
        .place(&request(), &campaign(), None, LIMIT)
        .await
        .expect_err("5xx");
    assert!(
        matches!(&err, CarrierError::Unavailable(r) if r.starts_with("503")),
        "{err:?}"
    );
    assert_eq!(stats(&failing.url).await.placed, 0);

    // Nothing listens on a port just released: refused, certainly not placed.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let err = http(&format!("http://{closed}"), 2000)
        .place(&request(), &campaign(), None, LIMIT)
        .await
        .expect_err("unreachable");
    assert!(matches!(err, CarrierError::Unavailable(_)), "{err:?}");

    let slow = sim(SimConfig {
        latency_ms: 1000,
        ..SimConfig::default()
    })
    .await;
    let err = http(&slow.url, 100)
        .place(&request(), &campaign(), None, LIMIT)
        .await
        .expect_err("timeout");
    assert!(matches!(err, CarrierError::Ambiguous(_)), "{err:?}");
}

#[tokio::test]
async fn the_twilio_adapter_authenticates_and_names_the_attempt_in_its_callback() {
    let sim = sim(SimConfig::default()).await;
    let config = TwilioCarrierConfig {
        base_url: sim.url.clone().into(),
        account_sid: "ACsimulator".into(),
        auth_token: Secret::new("sim-auth-token"),
        from: "+15550009999".into(),
        status_callback_base: "http://ingest.example".into(),
        ..TwilioCarrierConfig::default()
    };
    let twilio = TwilioCarrier::new(config.clone()).expect("adapter");
    let call = request();
    let callback = twilio.status_callback(&call);
    assert_eq!(
        callback,
        format!(
            "http://ingest.example/api/v1/callbacks/twilio?call_id={}&attempt=2&campaign_id=7",
            call.call_id
        )
    );
    // With the dialer's address, ingest can copy the outcome to it without a lookup.
    let address = ccm_dialer::outcomes::Address::parse("dialer-0_1-0123456789ab").expect("address");
    let addressed = TwilioCarrier::new(config.clone())
        .expect("adapter")
        .with_address(address);
    assert_eq!(
        addressed.status_callback(&call),
        format!("{callback}&dialer=dialer-0_1-0123456789ab")
    );
    let placement = twilio
        .place(&call, &campaign(), None, LIMIT)
        .await
        .expect("placed");
    assert!(
        placement
            .external_call_id
            .is_some_and(|sid| sid.starts_with("CA"))
    );
    let stats = stats(&sim.url).await;
    assert_eq!(stats.attempts[&call.msg_id()].campaign, "7");

    let wrong = TwilioCarrier::new(TwilioCarrierConfig {
        auth_token: Secret::new("wrong"),
        ..config
    })
    .expect("adapter");
    // Wrong credentials are the dialer's problem, not the call's: redelivered, not FAILED.
    let err = wrong
        .place(&request(), &campaign(), None, LIMIT)
        .await
        .expect_err("401");
    assert!(
        matches!(&err, CarrierError::Unavailable(r) if r.starts_with("401")),
        "{err:?}"
    );
}

/// The ring time each adapter asks for, as the carrier's ledger saw it: the campaign's
/// setting, else the adapter's default, and never under 15 s for telemarketing (FCC) — with
/// Twilio's `Timeout` configured at 10 s and with the http contract's default left unset.
#[tokio::test]
async fn each_adapter_asks_for_the_campaigns_ring_time_never_under_the_telemarketing_floor() {
    let sim = sim(SimConfig::default()).await;
    let twilio = TwilioCarrier::new(TwilioCarrierConfig {
        base_url: sim.url.clone().into(),
        account_sid: "ACsimulator".into(),
        auth_token: Secret::new("sim-auth-token"),
        from: "+15550009999".into(),
        status_callback_base: "http://ingest.example".into(),
        ring_timeout_secs: 10,
        ..TwilioCarrierConfig::default()
    })
    .expect("adapter");
    let http = http(&sim.url, 2000);
    let cases = [
        (Purpose::Informational, None, Some(10), None),
        (Purpose::Telemarketing, None, Some(15), Some(15)),
        (Purpose::Informational, Some(40), Some(40), Some(40)),
        (Purpose::Telemarketing, Some(25), Some(25), Some(25)),
    ];
    for (purpose, setting, twilio_asks, http_asks) in cases {
        let campaign = CampaignInfo {
            purpose,
            ring_timeout_secs: setting,
            ..campaign()
        };
        let (by_twilio, by_http) = (request(), request());
        twilio
            .place(&by_twilio, &campaign, None, LIMIT)
            .await
            .expect("placed");
        http.place(&by_http, &campaign, None, LIMIT)
            .await
            .expect("placed");
        let stats = stats(&sim.url).await;
        assert_eq!(
            stats.attempts[&by_twilio.msg_id()].ring_timeout_secs,
            twilio_asks,
            "twilio, {purpose:?} with {setting:?}"
        );
        assert_eq!(
            stats.attempts[&by_http.msg_id()].ring_timeout_secs,
            http_asks,
            "http, {purpose:?} with {setting:?}"
        );
    }
}

/// The caller id each adapter shows, as the carrier's ledger saw it: Twilio's `From` and the
/// http contract's `caller_id` carry the pool's number; without one Twilio keeps its
/// configured `from` and the http body names none.
#[tokio::test]
async fn each_adapter_shows_the_chosen_caller_id_or_its_own() {
    let sim = sim(SimConfig::default()).await;
    let twilio = TwilioCarrier::new(TwilioCarrierConfig {
        base_url: sim.url.clone().into(),
        account_sid: "ACsimulator".into(),
        auth_token: Secret::new("sim-auth-token"),
        from: "+15550009999".into(),
        status_callback_base: "http://ingest.example".into(),
        ..TwilioCarrierConfig::default()
    })
    .expect("adapter");
    let http = http(&sim.url, 2000);
    let pool: ccm_core::PhoneNumber = "+14155550100".parse().expect("number");
    let (twilio_pool, twilio_own, http_pool, http_own) =
        (request(), request(), request(), request());
    twilio
        .place(&twilio_pool, &campaign(), Some(&pool), LIMIT)
        .await
        .expect("placed");
    twilio
        .place(&twilio_own, &campaign(), None, LIMIT)
        .await
        .expect("placed");
    http.place(&http_pool, &campaign(), Some(&pool), LIMIT)
        .await
        .expect("placed");
    http.place(&http_own, &campaign(), None, LIMIT)
        .await
        .expect("placed");
    let stats = stats(&sim.url).await;
    let shown = |r: &ccm_core::DialRequest| stats.attempts[&r.msg_id()].caller_id.clone();
    assert_eq!(shown(&twilio_pool).as_deref(), Some("+14155550100"));
    assert_eq!(shown(&twilio_own).as_deref(), Some("+15550009999"));
    assert_eq!(shown(&http_pool).as_deref(), Some("+14155550100"));
    assert_eq!(shown(&http_own), None);
    assert_eq!(stats.caller_ids["+14155550100"], 2);
}

/// Over the carrier account's rate, both adapters read the 429 as throttling with the
/// carrier's `Retry-After`, not as an outage or a refusal; nothing is placed.
#[tokio::test]
async fn a_429_is_throttling_with_the_carriers_retry_after() {
    let sim = sim(SimConfig {
        account_cps: 1,
        twilio_account_sid: "ACx".into(),
        twilio_auth_token: "token".into(),
        ..SimConfig::default()
    })
    .await;
    let twilio = TwilioCarrier::new(TwilioCarrierConfig {
        base_url: sim.url.clone().into(),
        account_sid: "ACx".into(),
        auth_token: Secret::new("token"),
        from: "+15550009999".into(),
        status_callback_base: "http://ingest.example".into(),
        ..TwilioCarrierConfig::default()
    })
    .expect("adapter");
    let http = http(&sim.url, 2000);
    for carrier in [&twilio as &dyn Carrier, &http as &dyn Carrier] {
        carrier
            .place(&request(), &campaign(), None, LIMIT)
            .await
            .expect("the account's first call of the second");
        let err = carrier
            .place(&request(), &campaign(), None, LIMIT)
            .await
            .expect_err("over the rate");
        assert!(
            matches!(&err, CarrierError::Throttled { reason, retry_after }
                if reason.starts_with("429")
                    && *retry_after == Some(std::time::Duration::from_secs(1))),
            "{err:?}"
        );
    }
    let stats = stats(&sim.url).await;
    assert_eq!((stats.placed, stats.throttled), (2, 2));
}
