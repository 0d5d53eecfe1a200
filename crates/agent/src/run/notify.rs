//! The systemd notification protocol (sd_notify): READY, STATUS, WATCHDOG, STOPPING.
//!
//! A datagram to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace). Without the variable, every call is a no-op, so the agent runs
//! the same under systemd and in a terminal.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to systemd's notification socket, or nothing.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        Notifier::from_vars(
            std::env::var("NOTIFY_SOCKET").ok().as_deref(),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        )
    }

    /// From explicit values (testable without touching the environment).
    pub fn from_vars(
        socket: Option<&str>,
        wd_usec: Option<&str>,
        wd_pid: Option<&str>,
    ) -> Notifier {
        let target = socket.filter(|s| !s.is_empty()).and_then(|s| {
            let addr = match s.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
                None => SocketAddr::from_pathname(s).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        let for_us =
            wd_pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = wd_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// The watchdog timeout systemd expects keep-alives within, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `KEY=value` lines; errors are ignored (systemd may be gone at shutdown).
    pub fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(msg.as_bytes(), addr)
        {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// READY=1 with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A one-line summary shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// Watchdog keep-alive.
    pub fn keepalive(&self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1");
        }
    }

    /// STOPPING=1 and RELOADING=1 bracket a reload.
    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify");
        let server = UnixDatagram::bind(&p).unwrap();
        let n = Notifier::from_vars(p.to_str(), Some("2000000"), None);
        n.ready("ok");
        n.keepalive();
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok");
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        assert_eq!(n.watchdog(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn without_socket_nothing_happens_and_foreign_watchdog_is_ignored() {
        let n = Notifier::from_vars(None, Some("1000"), Some("1"));
        n.ready("x");
        assert_eq!(n.watchdog(), None, "WATCHDOG_PID of another process");
    }
}
