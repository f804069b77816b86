//! A real `nats-server` with JetStream, on a free port, storing under a temporary directory.

use std::{path::PathBuf, process::Command, process::Stdio, time::Duration};

use nix::sys::signal::Signal;

use crate::{
    HarnessError, nats_server,
    process::{Guard, free_port, spawn, wait_for_port},
};

/// A local nats-server. The store directory outlives [`LocalNats::stop`], so a test can
/// restart the server and find its streams again.
#[derive(Debug)]
pub struct LocalNats {
    port: u16,
    store: PathBuf,
    /// The binary to run; `None`: [`nats_server::program`].
    program: Option<PathBuf>,
    guard: Option<Guard>,
    _dir: Option<tempfile::TempDir>,
}

impl LocalNats {
    /// Starts a server whose data lives in a fresh temporary directory, removed on drop.
    pub fn start() -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("ccm-nats-")
            .tempdir()
            .map_err(HarnessError::Io)?;
        let mut nats = Self::start_in(dir.path().to_owned(), None)?;
        nats._dir = Some(dir);
        Ok(nats)
    }

    /// Starts a server storing in `store` (kept on drop), on `port` or a free one.
    pub fn start_in(store: PathBuf, port: Option<u16>) -> Result<Self, HarnessError> {
        Self::start_program(None, store, port)
    }

    /// Like [`LocalNats::start_in`] with another nats-server binary (the benchmark compares
    /// releases side by side in one process).
    pub fn start_program(
        program: Option<PathBuf>,
        store: PathBuf,
        port: Option<u16>,
    ) -> Result<Self, HarnessError> {
        let mut last = None;
        // A free port can be taken by another process between probing and binding: try again.
        for _ in 0..3 {
            let port = match port {
                Some(p) => p,
                None => free_port()?,
            };
            let mut nats = Self {
                port,
                store: store.clone(),
                program: program.clone(),
                guard: None,
                _dir: None,
            };
            match nats.restart() {
                Ok(()) => return Ok(nats),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(HarnessError::Exited {
            name: "nats-server",
        }))
    }

    /// Starts the server again (after [`LocalNats::stop`] or [`LocalNats::kill`]) on the same
    /// port and store.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        let program = match &self.program {
            Some(p) => p.clone(),
            None => nats_server::program()?,
        };
        let child = spawn(
            "nats-server",
            Command::new(program)
                .args([
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-sd",
                ])
                .arg(&self.store)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let mut guard = Guard::new("nats-server", child, Signal::SIGTERM);
        wait_for_port(
            "nats-server",
            self.port,
            &mut guard,
            Duration::from_secs(20),
        )?;
        self.guard = Some(guard);
        Ok(())
    }

    /// Stops the server gracefully.
    pub fn stop(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            guard.stop(Duration::from_secs(10));
        }
    }

    /// Kills the server (kill -9).
    pub fn kill(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            guard.kill();
        }
    }

    /// The server's process id while it runs (the benchmark reads its memory use).
    pub fn pid(&self) -> Option<u32> {
        self.guard.as_ref().and_then(Guard::pid)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}
