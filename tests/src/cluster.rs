//! A 3-node NATS JetStream cluster of local `nats-server` processes.
//!
//! The configuration is `nats/server/cluster/n*.conf` (the one shipped for running a cluster
//! on one machine) with its fixed ports and store directories replaced by free ports and a
//! temporary directory, so several tests can each run a cluster at once.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use nix::sys::signal::Signal;

use crate::{
    HarnessError,
    process::{Guard, free_port, spawn, wait_for_port},
};

/// The shipped configuration of node 1, the template of every node.
const NODE_TEMPLATE: &str = include_str!("../../nats/server/cluster/n1.conf");

/// One node: its ports and, while it runs, its process.
#[derive(Debug)]
struct Node {
    name: String,
    client_port: u16,
    config: PathBuf,
    guard: Option<Guard>,
}

/// Three nats-server processes forming the JetStream cluster `ccm`.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts the three nodes and waits until the cluster has a JetStream meta leader.
    pub fn start() -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("ccm-nats-cluster-")
            .tempdir()
            .map_err(HarnessError::Io)?;
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
            .collect::<Result<_, HarnessError>>()?;
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, _, cluster)| format!("nats-route://127.0.0.1:{cluster}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (client, http, cluster)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            let text = node_config(&name, *client, *http, *cluster, &store, &routes);
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config, text).map_err(HarnessError::Io)?;
            nodes.push(Node {
                name,
                client_port: *client,
                config,
                guard: None,
            });
        }
        let mut cluster = Self { nodes, _dir: dir };
        for i in 0..3 {
            cluster.start_node(i)?;
        }
        for i in 0..3 {
            cluster.wait_for(i)?;
        }
        Ok(cluster)
    }

    fn start_node(&mut self, i: usize) -> Result<(), HarnessError> {
        let program = crate::nats_server::program()?;
        let node = &mut self.nodes[i];
        let child = spawn(
            "nats-server",
            Command::new(program)
                .arg("-c")
                .arg(&node.config)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        node.guard = Some(Guard::new("nats-server", child, Signal::SIGTERM));
        Ok(())
    }

    fn wait_for(&mut self, i: usize) -> Result<(), HarnessError> {
        let node = &mut self.nodes[i];
        let Some(guard) = node.guard.as_mut() else {
            return Err(HarnessError::Exited {
                name: "nats-server",
            });
        };
        wait_for_port(
            "nats-server",
            node.client_port,
            guard,
            Duration::from_secs(30),
        )
    }

    /// Kills node `i` (kill -9).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut guard) = self.nodes[i].guard.take() {
            guard.kill();
        }
    }

    /// Starts node `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        self.kill(i);
        self.start_node(i)?;
        self.wait_for(i)
    }

    /// The nodes' names (`n1`..`n3`).
    pub fn names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// Node 1's client URL. A client connected to one node learns the others from it and
    /// fails over to them when that node dies.
    pub fn url(&self) -> String {
        self.node_url(0)
    }

    /// Every node's client URL, comma-separated (`CCM_NATS_URL`): each client picks one at
    /// random, so the connections spread over the nodes as they would in production.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Each node's process id while it runs (to measure its CPU and memory).
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.nodes
            .iter()
            .map(|n| n.guard.as_ref().and_then(Guard::pid))
            .collect()
    }

    /// Node `i`'s client URL.
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Waits until JetStream answers through the cluster (a meta leader is elected).
    pub async fn ready(&self, timeout: Duration) -> Result<(), HarnessError> {
        let client = ccm_core::nats::connect(&self.url(), "test").await?;
        let js = ccm_core::nats::jetstream(client);
        // Account info does not parse from a 2.9 server with this client; a stream lookup
        // answered "not found" shows the meta leader is there just as well.
        crate::eventually(timeout, || async {
            use async_nats::jetstream::{ErrorCode, context::GetStreamErrorKind};
            match js.get_stream("ccm_ready_probe").await {
                Ok(_) => Some(()),
                Err(e) => match e.kind() {
                    GetStreamErrorKind::JetStream(j)
                        if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                    {
                        Some(())
                    }
                    _ => None,
                },
            }
        })
        .await
        .ok_or_else(|| HarnessError::Setup("the NATS cluster elected no JetStream leader".into()))
    }
}

/// The shipped node configuration with this node's name, ports, store and routes.
fn node_config(
    name: &str,
    client: u16,
    http: u16,
    cluster: u16,
    store: &Path,
    routes: &[String],
) -> String {
    let mut out = String::new();
    let mut in_routes = false;
    for line in NODE_TEMPLATE.lines() {
        let trimmed = line.trim();
        if in_routes {
            if trimmed == "]" {
                in_routes = false;
                for route in routes {
                    out.push_str(&format!("    {route}\n"));
                }
                out.push_str("  ]\n");
            }
            continue;
        }
        let replaced = if trimmed.starts_with("server_name:") {
            format!("server_name: {name}")
        } else if line.starts_with("listen:") {
            format!("listen: 127.0.0.1:{client}")
        } else if trimmed.starts_with("http:") {
            format!("http: 127.0.0.1:{http}")
        } else if trimmed.starts_with("store_dir:") {
            format!("  store_dir: \"{}\"", store.display())
        } else if line.starts_with("  listen:") {
            format!("  listen: 127.0.0.1:{cluster}")
        } else if trimmed.starts_with("routes:") {
            in_routes = true;
            "  routes: [".to_owned()
        } else {
            line.to_owned()
        };
        out.push_str(&replaced);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::node_config;

    #[test]
    fn the_shipped_node_config_is_rewritten_to_the_given_ports() {
        let routes = vec!["nats-route://127.0.0.1:7001".to_owned()];
        let text = node_config("n2", 5001, 6001, 7001, "/tmp/s".as_ref(), &routes);
        for wanted in [
            "server_name: n2",
            "listen: 127.0.0.1:5001",
            "http: 127.0.0.1:6001",
            "store_dir: \"/tmp/s\"",
            "  listen: 127.0.0.1:7001",
            "    nats-route://127.0.0.1:7001\n  ]",
        ] {
            assert!(text.contains(wanted), "{wanted} missing from\n{text}");
        }
        assert!(!text.contains("4222") && !text.contains("6222") && !text.contains("6224"));
        assert!(text.contains("name: ccm"));
    }
}
