//! The faults a run injects, each with a start, a hold and an end, so the system is left
//! whole again before the auditor looks.

use std::time::Duration;

use serde_json::json;

use super::services::{Service, Services};
use crate::{HarnessError, TestEnv, cluster::NatsCluster};

/// One fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// `kill -9` of one instance of a service (0 when it runs once), started again after
    /// `down`.
    Kill {
        service: Service,
        instance: usize,
        down: Duration,
    },
    /// nats-server stopped and started again (a rolling restart of a single server).
    NatsRestart { down: Duration },
    /// nats-server frozen with SIGSTOP (connections open, nothing answered), then SIGCONT.
    NatsPause { hold: Duration },
    /// One node of the NATS cluster killed (`kill -9`), started again after `down`.
    NatsNodeKill { node: usize, down: Duration },
    /// PostgreSQL stopped for `down`, then started again.
    PostgresOutage { down: Duration },
    /// carrier-sim answers this share of placements 503 for `hold`.
    CarrierErrors { rate: f64, hold: Duration },
    /// carrier-sim answers every placement this much later, for `hold`.
    CarrierLatency { latency_ms: u64, hold: Duration },
    /// carrier-sim drops, duplicates and reorders these shares of callbacks, for `hold`.
    Callbacks {
        drop: f64,
        duplicate: f64,
        reorder: f64,
        hold: Duration,
    },
    /// Several faults at the same time: the carrier-side ones (errors, latency, callbacks)
    /// are set together and held for the longest of their holds, while the process and
    /// server faults among them run one after another inside that time.
    Together(Vec<Fault>),
}

impl Fault {
    /// A short description for the report.
    pub fn label(&self) -> String {
        match self {
            Fault::Kill {
                service,
                instance,
                down,
            } => {
                format!(
                    "kill -9 {}{} (down {:.1} s)",
                    service.name(),
                    if *instance == 0 {
                        String::new()
                    } else {
                        format!(" #{instance}")
                    },
                    down.as_secs_f64()
                )
            }
            Fault::NatsRestart { down } => {
                format!("nats-server restart (down {:.1} s)", down.as_secs_f64())
            }
            Fault::NatsPause { hold } => {
                format!("nats-server SIGSTOP {:.1} s", hold.as_secs_f64())
            }
            Fault::NatsNodeKill { node, down } => {
                format!("kill -9 NATS node {node} (down {} s)", down.as_secs())
            }
            Fault::PostgresOutage { down } => {
                format!("PostgreSQL stopped {:.1} s", down.as_secs_f64())
            }
            Fault::CarrierErrors { rate, hold } => {
                format!("carrier 503 x{rate} for {} s", hold.as_secs())
            }
            Fault::CarrierLatency { latency_ms, hold } => {
                format!("carrier +{latency_ms} ms for {} s", hold.as_secs())
            }
            Fault::Callbacks {
                drop,
                duplicate,
                reorder,
                hold,
            } => format!(
                "callbacks drop {drop} dup {duplicate} reorder {reorder} for {} s",
                hold.as_secs()
            ),
            Fault::Together(faults) => {
                let labels: Vec<String> = faults.iter().map(Fault::label).collect();
                format!("at once: {}", labels.join(" + "))
            }
        }
    }

    /// The carrier-sim settings (`PUT /faults` fields) and hold of a carrier-side fault.
    fn carrier_settings(&self) -> Option<(serde_json::Value, Duration)> {
        match self {
            Fault::CarrierErrors { rate, hold } => Some((json!({"error_rate": rate}), *hold)),
            Fault::CarrierLatency { latency_ms, hold } => {
                Some((json!({"latency_ms": latency_ms}), *hold))
            }
            Fault::Callbacks {
                drop,
                duplicate,
                reorder,
                hold,
            } => Some((
                json!({"drop_rate": drop, "duplicate_rate": duplicate, "reorder_rate": reorder}),
                *hold,
            )),
            _ => None,
        }
    }
}

/// What a fault acts on.
#[derive(Debug)]
pub struct Targets<'a> {
    pub env: &'a mut TestEnv,
    pub cluster: Option<&'a mut NatsCluster>,
    pub services: &'a mut Services,
    pub http: &'a reqwest::Client,
}

/// Injects `fault`, holds it, and undoes it.
pub async fn inject(fault: &Fault, t: &mut Targets<'_>) -> Result<(), HarnessError> {
    match fault {
        Fault::Kill {
            service,
            instance,
            down,
        } => {
            t.services.kill(*service, *instance);
            tokio::time::sleep(*down).await;
            t.services.restart(*service, *instance)?;
            if *service == Service::Ingest {
                t.services.ready(Duration::from_secs(60)).await?;
            }
        }
        Fault::NatsRestart { down } => {
            let nats = t
                .env
                .local_nats
                .as_mut()
                .ok_or_else(|| HarnessError::Setup("no local nats-server to restart".into()))?;
            tokio::task::block_in_place(|| nats.stop());
            tokio::time::sleep(*down).await;
            tokio::task::block_in_place(|| nats.restart())?;
        }
        Fault::NatsPause { hold } => {
            let pid = t
                .env
                .local_nats
                .as_ref()
                .and_then(|n| n.pid())
                .ok_or_else(|| HarnessError::Setup("no local nats-server to pause".into()))?;
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
            let signal = |s| {
                nix::sys::signal::kill(pid, s)
                    .map_err(|e| HarnessError::Setup(format!("signalling nats-server: {e}")))
            };
            signal(nix::sys::signal::Signal::SIGSTOP)?;
            tokio::time::sleep(*hold).await;
            signal(nix::sys::signal::Signal::SIGCONT)?;
        }
        Fault::NatsNodeKill { node, down } => {
            let cluster = t
                .cluster
                .as_deref_mut()
                .ok_or_else(|| HarnessError::Setup("no NATS cluster".into()))?;
            tokio::task::block_in_place(|| cluster.kill(*node));
            tokio::time::sleep(*down).await;
            tokio::task::block_in_place(|| cluster.restart(*node))?;
        }
        Fault::PostgresOutage { down } => {
            let pg = t
                .env
                .local_postgres
                .as_mut()
                .ok_or_else(|| HarnessError::Setup("no local PostgreSQL to stop".into()))?;
            tokio::task::block_in_place(|| pg.stop());
            tokio::time::sleep(*down).await;
            tokio::task::block_in_place(|| pg.restart())?;
        }
        Fault::Together(faults) => together(faults, t).await?,
        Fault::CarrierErrors { .. } | Fault::CarrierLatency { .. } | Fault::Callbacks { .. } => {
            if let Some((settings, hold)) = fault.carrier_settings() {
                carrier(t, settings, hold).await?;
            }
        }
    }
    Ok(())
}

/// Several faults at once: one `PUT /faults` with every carrier-side setting, then the
/// other faults in turn while those hold, then the carrier cleared once the longest hold
/// is over.
async fn together(faults: &[Fault], t: &mut Targets<'_>) -> Result<(), HarnessError> {
    let mut settings = serde_json::Map::new();
    let mut hold = Duration::ZERO;
    let mut others = Vec::new();
    for fault in faults {
        match fault.carrier_settings() {
            Some((serde_json::Value::Object(fields), h)) => {
                settings.extend(fields);
                hold = hold.max(h);
            }
            _ => others.push(fault),
        }
    }
    let started = tokio::time::Instant::now();
    set_carrier_faults(
        t.http,
        &t.services.sim,
        &serde_json::Value::Object(settings),
    )
    .await?;
    for fault in others {
        // A nested `Together` is flattened the same way; boxed because it recurses.
        Box::pin(inject(fault, t)).await?;
    }
    tokio::time::sleep(hold.saturating_sub(started.elapsed())).await;
    set_carrier_faults(t.http, &t.services.sim, &json!({})).await
}

/// Sets carrier-sim's faults for `hold`, then clears them.
async fn carrier(
    t: &mut Targets<'_>,
    faults: serde_json::Value,
    hold: Duration,
) -> Result<(), HarnessError> {
    set_carrier_faults(t.http, &t.services.sim, &faults).await?;
    tokio::time::sleep(hold).await;
    set_carrier_faults(t.http, &t.services.sim, &json!({})).await
}

/// `PUT /faults` on carrier-sim.
pub async fn set_carrier_faults(
    http: &reqwest::Client,
    sim: &str,
    faults: &serde_json::Value,
) -> Result<(), HarnessError> {
    let response = http
        .put(format!("{sim}/faults"))
        .json(faults)
        .send()
        .await
        .map_err(|e| HarnessError::Setup(format!("carrier-sim faults: {e}")))?;
    if !response.status().is_success() {
        return Err(HarnessError::Setup(format!(
            "carrier-sim refused faults {faults}: {}",
            response.status()
        )));
    }
    Ok(())
}
