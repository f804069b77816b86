//! A small, bounded load generator for ingest (127.0.0.1 only).
//!
//! ```text
//! cargo run -p ccm-ingest --example load -- http://127.0.0.1:8000 <token> [connections] [seconds] [bulk]
//! ```
//!
//! It creates a campaign, then (1) sends `POST /api/v1/initiate-call/` from `connections`
//! concurrent connections for `seconds`, each call to a distinct number, and prints
//! requests/s and latency percentiles; then (2) sends one `POST /api/v1/bulk-initiate-calls/`
//! with `bulk` distinct numbers and prints its wall time. Every request must succeed; any
//! other status is counted and printed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base: String = arg(&args, 1, "http://127.0.0.1:8000".to_owned());
    let token: String = arg(&args, 2, "dev-token-12345".to_owned());
    let connections: usize = arg(&args, 3, 64);
    let seconds: u64 = arg::<u64>(&args, 4, 10).min(60);
    let bulk: usize = arg::<usize>(&args, 5, 10_000).min(100_000);
    assert!(
        base.starts_with("http://127.0.0.1") || base.starts_with("http://localhost"),
        "load is only ever generated against this machine"
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .expect("client");

    let campaign: Value = http
        .post(format!("{base}/api/v1/campaigns"))
        .header("X-Auth-Token", &token)
        .json(&json!({"name": "load", "max_concurrent_calls": 100000}))
        .send()
        .await
        .expect("create campaign")
        .json()
        .await
        .expect("campaign json");
    let campaign = campaign["id"].as_u64().expect("campaign id");

    // Distinct numbers, different on every run: 11 digits starting from the clock.
    let start = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        % 100_000)
        * 100_000;
    let next = Arc::new(AtomicU64::new(start));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let began = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (http, base, token, next) = (http.clone(), base.clone(), token.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let body = json!({"phone_number": format!("+1{n:010}"), "campaign_id": campaign});
                let sent = Instant::now();
                let result = http
                    .post(format!("{base}/api/v1/initiate-call/"))
                    .header("X-Auth-Token", &token)
                    .json(&body)
                    .send()
                    .await;
                match result {
                    Ok(r) if r.status() == 201 => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    Ok(r) => {
                        failures += 1;
                        if failures < 3 {
                            eprintln!(
                                "status {}: {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        eprintln!("request failed: {e}");
                    }
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for worker in workers {
        let (l, f) = worker.await.expect("worker");
        latencies.extend(l);
        failures += f;
    }
    let elapsed = began.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "single calls: {} accepted, {failures} failed in {elapsed:.1} s with {connections} connections: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );

    if bulk > 0 {
        let first = next.fetch_add(bulk as u64, Ordering::Relaxed);
        let numbers: Vec<String> = (first..first + bulk as u64)
            .map(|n| format!("+1{n:010}"))
            .collect();
        let sent = Instant::now();
        let response = http
            .post(format!("{base}/api/v1/bulk-initiate-calls/"))
            .header("X-Auth-Token", &token)
            .json(&json!({"campaign_id": campaign, "phone_numbers": numbers}))
            .send()
            .await
            .expect("bulk request");
        let status = response.status();
        let body: Value = response.json().await.expect("bulk json");
        println!(
            "bulk: {bulk} numbers -> {status}, {} accepted, {} failed, wall time {:.0} ms",
            body["call_ids"].as_array().map_or(0, Vec::len),
            body["failed"],
            sent.elapsed().as_secs_f64() * 1e3
        );
    }
}
