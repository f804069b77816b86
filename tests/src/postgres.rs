//! A real PostgreSQL server on a free port, one throw-away cluster per test.
//!
//! `initdb` takes seconds, so it runs once per machine: the result is kept as a template under
//! the system temp directory and each test copies it (a few tens of milliseconds) and starts
//! its own server on the copy. PostgreSQL refuses to run as root, so when the harness runs as
//! root the server and `initdb` run as the `postgres` user, which owns the data directories.

use std::{
    fs::File,
    io::Write,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::Signal,
    unistd::{Gid, Uid, User, chown},
};

use crate::{
    HarnessError,
    process::{Guard, find_program, free_port, spawn, wait_for_port},
};

/// The superuser the clusters are created with (trust authentication, loopback only).
pub const USER: &str = "ccm";
/// The database created in every cluster.
pub const DATABASE: &str = "ccm";

/// A local PostgreSQL server on its own copy of the template cluster.
#[derive(Debug)]
pub struct LocalPostgres {
    port: u16,
    data: PathBuf,
    owner: Option<(Uid, Gid)>,
    guard: Option<Guard>,
    _dir: Option<tempfile::TempDir>,
}

impl LocalPostgres {
    /// Starts a server on a fresh copy of the template, removed on drop.
    pub fn start() -> Result<Self, HarnessError> {
        let owner = server_owner()?;
        let template = template(owner)?;
        let dir = tempfile::Builder::new()
            .prefix("ccm-pg-")
            .tempdir()
            .map_err(HarnessError::Io)?;
        chown_to(dir.path(), owner)?;
        let data = dir.path().join("data");
        copy_dir(&template, &data)?;
        let mut pg = Self::start_in(data, owner, None)?;
        pg._dir = Some(dir);
        Ok(pg)
    }

    /// Starts a server on an existing data directory (kept on drop), initialising it from the
    /// template first when it does not exist; on `port` or a free one.
    pub fn start_persistent(data: PathBuf, port: Option<u16>) -> Result<Self, HarnessError> {
        let owner = server_owner()?;
        if !data.join("PG_VERSION").exists() {
            let template = template(owner)?;
            if let Some(parent) = data.parent() {
                std::fs::create_dir_all(parent).map_err(HarnessError::Io)?;
                // The server puts its socket beside the data directory, so it must own it.
                chown_to(parent, owner)?;
            }
            copy_dir(&template, &data)?;
        }
        Self::start_in(data, owner, port)
    }

    fn start_in(
        data: PathBuf,
        owner: Option<(Uid, Gid)>,
        port: Option<u16>,
    ) -> Result<Self, HarnessError> {
        let mut last = None;
        for _ in 0..3 {
            let port = match port {
                Some(p) => p,
                None => free_port()?,
            };
            let mut pg = Self {
                port,
                data: data.clone(),
                owner,
                guard: None,
                _dir: None,
            };
            match pg.restart() {
                Ok(()) => return Ok(pg),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(HarnessError::Exited { name: "postgres" }))
    }

    /// Starts the server again after [`LocalPostgres::stop`] or [`LocalPostgres::kill`].
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        let program = find_program("postgres")?;
        let log = File::create(self.data.with_extension("log")).map_err(HarnessError::Io)?;
        let socket_dir = self.data.parent().unwrap_or(Path::new("/tmp")).to_owned();
        let mut command = Command::new(program);
        command
            .arg("-D")
            .arg(&self.data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()))
            // Throw-away clusters: durability against power loss buys nothing here.
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        as_owner(&mut command, self.owner);
        let child = spawn("postgres", &mut command)?;
        // SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients and stops cleanly.
        let mut guard = Guard::new("postgres", child, Signal::SIGINT);
        wait_for_port("postgres", self.port, &mut guard, Duration::from_secs(30))?;
        self.guard = Some(guard);
        Ok(())
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            guard.stop(Duration::from_secs(20));
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

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }
}

/// The user the server must run as: `postgres` when we are root, ourselves otherwise.
fn server_owner() -> Result<Option<(Uid, Gid)>, HarnessError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or(HarnessError::Missing {
            program: "the postgres system user",
        })?;
    Ok(Some((user.uid, user.gid)))
}

fn as_owner(command: &mut Command, owner: Option<(Uid, Gid)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid.as_raw()).gid(gid.as_raw());
    }
}

fn chown_to(path: &Path, owner: Option<(Uid, Gid)>) -> Result<(), HarnessError> {
    if let Some((uid, gid)) = owner {
        chown(path, Some(uid), Some(gid)).map_err(|e| HarnessError::Io(e.into()))?;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), HarnessError> {
    // `cp -a` keeps ownership and the 0700 mode PostgreSQL insists on.
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(HarnessError::Io)?;
    if status.success() {
        Ok(())
    } else {
        Err(HarnessError::Setup("cp -a of the template failed".into()))
    }
}

/// The template cluster, created once per machine (and per server version).
fn template(owner: Option<(Uid, Gid)>) -> Result<PathBuf, HarnessError> {
    let initdb = find_program("initdb")?;
    let version = initdb
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pg".into());
    let uid = nix::unistd::geteuid();
    let final_dir = std::env::temp_dir().join(format!("ccm-pg-template-{version}-{uid}"));
    if final_dir.join("PG_VERSION").exists() {
        return Ok(final_dir);
    }
    // Build in a private directory and rename into place: the rename is atomic, so tests
    // starting at the same time never see a half-built template.
    let build = tempfile::Builder::new()
        .prefix("ccm-pg-build-")
        .tempdir()
        .map_err(HarnessError::Io)?;
    chown_to(build.path(), owner)?;
    let data = build.path().join("data");
    let mut init = Command::new(&initdb);
    init.arg("-D")
        .arg(&data)
        .args([
            "-U",
            USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    as_owner(&mut init, owner);
    let out = init.output().map_err(|source| HarnessError::Spawn {
        name: "initdb",
        source,
    })?;
    if !out.status.success() {
        return Err(HarnessError::Setup(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let mut single = Command::new(find_program("postgres")?);
    single
        .args(["--single", "-D"])
        .arg(&data)
        .arg("postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    as_owner(&mut single, owner);
    let mut child = spawn("postgres --single", &mut single)?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "CREATE DATABASE {DATABASE};").map_err(HarnessError::Io)?;
    }
    let out = child.wait_with_output().map_err(HarnessError::Io)?;
    if !out.status.success() {
        return Err(HarnessError::Setup(format!(
            "creating the database failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    match std::fs::rename(&data, &final_dir) {
        Ok(()) => Ok(final_dir),
        // Another test process won the race; its template is as good as ours.
        Err(_) if final_dir.join("PG_VERSION").exists() => Ok(final_dir),
        Err(e) => Err(HarnessError::Io(e)),
    }
}
