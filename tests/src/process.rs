//! Child processes that stop when dropped, and the small helpers to start them.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::HarnessError;

/// A running child process; dropping it stops the process (`signal`, then SIGKILL).
#[derive(Debug)]
pub struct Guard {
    name: &'static str,
    child: Option<Child>,
    signal: Signal,
}

impl Guard {
    pub fn new(name: &'static str, child: Child, signal: Signal) -> Self {
        Self {
            name,
            child: Some(child),
            signal,
        }
    }

    /// The process id, for tests that send it signals of their own (SIGKILL, SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process gracefully, waiting up to `timeout` before killing it.
    pub fn stop(&mut self, timeout: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        if kill(pid, self.signal).is_ok() {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::warn!(process = self.name, "did not stop in time; killing it");
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the process has exited (and so can be restarted).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(HarnessError::Io)?;
    Ok(listener.local_addr().map_err(HarnessError::Io)?.port())
}

/// Waits until something accepts TCP connections on `port`, or `child` exits.
pub fn wait_for_port(
    name: &'static str,
    port: u16,
    guard: &mut Guard,
    timeout: Duration,
) -> Result<(), HarnessError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if guard.has_exited() {
            return Err(HarnessError::Exited { name });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(HarnessError::Timeout { name, port })
}

/// Finds a program on `PATH` or in the extra directories Debian packages use (`/usr/sbin` for
/// nats-server, `/usr/lib/postgresql/<version>/bin` for PostgreSQL, which is not on `PATH`).
pub fn find_program(name: &'static str) -> Result<PathBuf, HarnessError> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/local/sbin".into());
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        // The newest installed version first.
        versions.sort();
        versions.reverse();
        dirs.extend(versions);
    }
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|path| is_executable(path))
        .ok_or(HarnessError::Missing { program: name })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Spawns `command`, naming the program in the error when it cannot start.
pub fn spawn(name: &'static str, command: &mut Command) -> Result<Child, HarnessError> {
    command
        .spawn()
        .map_err(|source| HarnessError::Spawn { name, source })
}
