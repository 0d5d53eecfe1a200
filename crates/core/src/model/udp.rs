//! UDP sockets serving a port, from `/proc/net/udp` and `/proc/net/udp6`: a DNS server
//! on an address other than loopback is a resolver's proof (`role: auto`).
//!
//! Each line after the header is `sl: local rem st ...`, the addresses in hex as the
//! kernel prints a `__be32` word with `%08X` (so in the host's byte order: 127.0.0.1 is
//! `0100007F` on x86_64), the port in plain hex. A socket serving a port is unconnected:
//! state 07 (TCP_CLOSE) and no remote port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A socket bound to the port, and whether its address is loopback only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serving {
    /// Where it listens (0.0.0.0 and :: are every address).
    pub addr: SocketAddr,
    /// 127.0.0.0/8, ::1 or ::ffff:127.0.0.0/104: it serves only this host.
    pub loopback: bool,
}

/// The unconnected sockets bound to `port` in `text` (either file), in file order;
/// malformed lines are skipped (a file cut at a bound ends in half a line).
pub fn serving(text: &str, port: u16) -> Vec<Serving> {
    text.lines().skip(1).filter_map(|l| line(l, port)).collect()
}

fn line(l: &str, port: u16) -> Option<Serving> {
    let mut f = l.split_whitespace();
    let (_sl, local, remote, state) = (f.next()?, f.next()?, f.next()?, f.next()?);
    let (addr, p) = local.split_once(':')?;
    if u16::from_str_radix(p, 16).ok()? != port || state != "07" || !remote.ends_with(":0000") {
        return None;
    }
    let ip = address(addr)?;
    let loopback = match ip {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    };
    Some(Serving {
        addr: SocketAddr::new(ip, port),
        loopback,
    })
}

/// An address as the kernel prints it: 8 hex digits (IPv4) or 32 (IPv6, four words).
fn address(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   991        0 18042 2 0000000000000000 0
  2: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 18043 2 0000000000000000 0
  3: 0100000A:0035 0200000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 18044 2 0000000000000000 0
  4: 0100000A:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 18045 2 0000000000000000 0
  5: 0100000A:00";

    #[test]
    fn serving_sockets_on_the_port_with_loopback_told_apart() {
        let s = serving(UDP, 53);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].addr.to_string(), "127.0.0.53:53");
        assert!(s[0].loopback);
        assert_eq!(s[1].addr.to_string(), "0.0.0.0:53");
        assert!(!s[1].loopback);
    }

    #[test]
    fn ipv6_words_and_mapped_loopback() {
        let udp6 = "header
  0: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 0 0 0 0 0 1 2 0 0
  1: 0000000000000000FFFF00000100007F:0035 00000000000000000000000000000000:0000 07 0 0 0 0 0 1 2 0 0
  2: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 0 0 0 0 0 1 2 0 0";
        let s = serving(udp6, 53);
        assert_eq!(s[0].addr.ip().to_string(), "::1");
        assert!(s[0].loopback && s[1].loopback && !s[2].loopback, "{s:?}");
    }
}
