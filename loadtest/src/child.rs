//! The processes the harness starts (mxgate, haproxy, a sink), on `std::process`: tokio's `process`
//! feature would reach mxgate's own build through Cargo's feature unification whenever the
//! workspace is built together, and with it a lock on process-wide state taken at every turn of
//! every worker's event loop.

use std::io;
use std::process::{Command, ExitStatus};
use std::time::Duration;
use tokio::sync::oneshot;

/// A child process, killed if it is dropped before it was seen to exit. Its exit is awaited by a
/// thread of its own that reaps it.
pub struct ChildProcess {
    pid: u32,
    exit: oneshot::Receiver<io::Result<ExitStatus>>,
    exited: Option<ExitStatus>,
}

impl ChildProcess {
    /// Starts `command` and hands back its stderr if `command` piped it (the one stream the harness
    /// reads: mxgate's log); any other pipe is closed here.
    pub fn spawn(
        command: &mut Command,
    ) -> io::Result<(ChildProcess, Option<std::process::ChildStderr>)> {
        let mut child = command.spawn()?;
        let stderr = child.stderr.take();
        let pid = child.id();
        let (tx, exit) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                let _ = tx.send(child.wait());
            })?;
        Ok((
            ChildProcess {
                pid,
                exit,
                exited: None,
            },
            stderr,
        ))
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits at most `limit` for the process to exit. `None` if it did not exit in time.
    pub async fn wait(&mut self, limit: Duration) -> Option<io::Result<ExitStatus>> {
        if let Some(status) = self.exited {
            return Some(Ok(status));
        }
        let result = match tokio::time::timeout(limit, &mut self.exit).await.ok()? {
            Ok(result) => result,
            Err(_) => Err(io::Error::other(
                "the thread that waits for the child ended",
            )),
        };
        if let Ok(status) = &result {
            self.exited = Some(*status);
        }
        Some(result)
    }

    /// Sends `signal` (a name for kill(1): "TERM", "INT", "KILL") to the process by its PID, unless
    /// it was already seen to exit (its PID may be another process's by now).
    pub async fn signal(&mut self, signal: &str) {
        if self.has_exited() {
            return;
        }
        let (pid, signal) = (self.pid, signal.to_owned());
        let _ = tokio::task::spawn_blocking(move || kill(pid, &signal)).await;
    }

    /// Sends `signal`, then waits at most `limit` for the process to exit.
    pub async fn signal_and_wait(
        &mut self,
        signal: &str,
        limit: Duration,
    ) -> Option<io::Result<ExitStatus>> {
        self.signal(signal).await;
        self.wait(limit).await
    }

    fn has_exited(&mut self) -> bool {
        if self.exited.is_some() {
            return true;
        }
        match self.exit.try_recv() {
            Ok(Ok(status)) => {
                self.exited = Some(status);
                true
            }
            Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => true,
            Err(oneshot::error::TryRecvError::Empty) => false,
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if !self.has_exited() {
            let _ = kill(self.pid, "KILL");
        }
    }
}

/// Runs kill(1) for `pid` with `signal` ("HUP", "TERM", ...). For a process the caller knows is
/// still running; [`ChildProcess::signal`] checks that for its own child.
pub fn kill(pid: u32, signal: &str) -> io::Result<ExitStatus> {
    Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    use tokio::io::AsyncReadExt;

    fn sleeper() -> Command {
        let mut command = Command::new("sleep");
        command.arg("60").stderr(Stdio::piped());
        command
    }

    #[tokio::test]
    async fn a_signalled_child_is_reaped_and_its_signal_reported() {
        let (mut child, _) = ChildProcess::spawn(&mut sleeper()).unwrap();
        assert!(
            child.wait(Duration::from_millis(50)).await.is_none(),
            "a sleeping child has not exited"
        );
        let status = child
            .signal_and_wait("TERM", Duration::from_secs(10))
            .await
            .expect("exits after SIGTERM")
            .unwrap();
        assert_eq!(status.signal(), Some(15));
        // Its exit is remembered: waiting again does not wait.
        let again = child.wait(Duration::ZERO).await.expect("already exited");
        assert_eq!(again.unwrap().signal(), Some(15));
    }

    #[tokio::test]
    async fn a_child_dropped_while_running_is_killed() {
        let (child, stderr) = ChildProcess::spawn(&mut sleeper()).unwrap();
        let mut stderr =
            tokio::net::unix::pipe::Receiver::from_owned_fd(stderr.unwrap().into()).unwrap();
        drop(child);
        // The pipe's other end closes when the process dies.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stderr.read_to_end(&mut rest))
            .await
            .expect("the dropped child was killed");
        assert_eq!(read.unwrap(), 0);
    }
}
