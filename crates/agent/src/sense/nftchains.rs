//! Where NAT is configured in nftables: one `NFT_MSG_GETCHAIN` dump (NETLINK_NETFILTER,
//! every family) of the calling thread's namespace, keeping the base chains of type
//! `nat`. iptables-nft's `nat` table is such chains too, so this covers nft, firewalld
//! and iptables-nft; iptables-legacy is `/proc/net/ip_tables_names` (the caller's).
//!
//! A role's proof (`role: auto`), not a ruleset reader: only the chains' table, name
//! and type are read, every length checked before it is read, the dump bounded in
//! datagrams. Layouts: include/uapi/linux/netfilter/nf_tables.h.

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, NetlinkAddr, sendto, setsockopt, sockopt};
use std::os::fd::AsRawFd;
use std::path::Path;

use super::ctnetlink::{
    self, DumpError, Message, NFGENMSG_LEN, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_HDRLEN, ParseError, RECV_BUF,
};
use super::ctstats::Replies;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_TYPE: u16 = 7;

/// The most datagrams one dump reads: a ruleset of tens of thousands of chains is cut
/// there (the chains found so far are kept, and the cut is said).
const MAX_DATAGRAMS: usize = 256;

/// The file of recorded replies to the chain dump, in a fixture tree's `netlink/`.
pub const RECORDED: &str = "nft_chains";

/// A base chain of type `nat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatChain {
    /// `ip`, `ip6`, `inet`, ...
    pub family: &'static str,
    /// Its table (as the ruleset spells it; the caller makes it printable).
    pub table: String,
    /// Its name.
    pub chain: String,
}

/// What one dump found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chains {
    /// The NAT chains, in the kernel's order.
    pub nat: Vec<NatChain>,
    /// The dump was cut at [`MAX_DATAGRAMS`].
    pub cut: bool,
}

/// The family's name in nft's syntax.
fn family(f: u8) -> &'static str {
    match f {
        1 => "inet",
        2 => "ip",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        10 => "ip6",
        _ => "unknown",
    }
}

fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// The NAT chains of the calling thread's namespace, or of the recorded replies.
pub fn read(replies: Replies<'_>) -> Result<Chains, DumpError> {
    match replies {
        Replies::Kernel => kernel(),
        Replies::Recorded(dir) => recorded(&dir.join(RECORDED)),
        Replies::Unavailable => Err(DumpError::Socket {
            what: "socket",
            errno: Errno::ENODEV,
            hint: " (a procfs root other than /proc, without recorded replies)",
        }),
    }
}

fn kernel() -> Result<Chains, DumpError> {
    let fd = ctnetlink::open_socket()?;
    let timeout = nix::sys::time::TimeVal::new(1, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)
        .map_err(ctnetlink::sock_err("setsockopt"))?;
    let seq = std::process::id() ^ 0x6e66_7400;
    let mut req = [0u8; NLMSG_HDRLEN + NFGENMSG_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDRLEN + NFGENMSG_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&nft_type(NFT_MSG_GETCHAIN).to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC (every family), NFNETLINK_V0, res_id 0.
    sendto(
        fd.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(ctnetlink::sock_err("sendto"))?;
    let mut buf = vec![0u8; RECV_BUF];
    let mut out = Chains::default();
    for _ in 0..MAX_DATAGRAMS {
        let n = match ctnetlink::recv_from_kernel(fd.as_raw_fd(), &mut buf) {
            Ok(n) => n,
            Err(ctnetlink::RecvError::Errno(Errno::EINTR)) => continue,
            Err(e) => return Err(e.into_dump_error()),
        };
        if take(&buf[..n], Some(seq), &mut out)? {
            return Ok(out);
        }
    }
    out.cut = true;
    Ok(out)
}

/// Takes one datagram's chains into `out`; true once the dump's end was in it.
fn take(datagram: &[u8], seq: Option<u32>, out: &mut Chains) -> Result<bool, DumpError> {
    let mut done = false;
    ctnetlink::for_each_message(datagram, |m: Message<'_>| -> Result<bool, DumpError> {
        if seq.is_some_and(|s| s != m.seq) {
            return Ok(true);
        }
        match m.ty {
            NLMSG_DONE => {
                done = true;
                Ok(false)
            }
            NLMSG_ERROR => match m.error_code()? {
                Some(errno) => Err(DumpError::Socket {
                    what: "NFT_MSG_GETCHAIN",
                    errno,
                    hint: "",
                }),
                None => Ok(true),
            },
            t if t == nft_type(NFT_MSG_NEWCHAIN) => {
                if let Some(c) = nat_chain(&m)? {
                    out.nat.push(c);
                }
                Ok(true)
            }
            _ => Ok(true),
        }
    })?;
    Ok(done)
}

/// The chain of one NEWCHAIN message, when it is a base chain of type `nat`.
fn nat_chain(m: &Message<'_>) -> Result<Option<NatChain>, ParseError> {
    let Some(&fam) = m.body.first() else {
        return Err(ParseError::Truncated {
            what: "nfgenmsg",
            offset: m.offset,
            need: NFGENMSG_LEN,
            have: 0,
        });
    };
    let rest = m.body.get(NFGENMSG_LEN..).unwrap_or_default();
    let (mut table, mut chain, mut ty) = (None, None, None);
    ctnetlink::attrs(rest, m.offset + NFGENMSG_LEN, |t, v, _| {
        let text =
            || String::from_utf8_lossy(v.split(|&b| b == 0).next().unwrap_or(v)).into_owned();
        match t {
            NFTA_CHAIN_TABLE => table = Some(text()),
            NFTA_CHAIN_NAME => chain = Some(text()),
            NFTA_CHAIN_TYPE => ty = Some(text()),
            _ => {}
        }
        Ok(())
    })?;
    Ok(match (table, chain, ty.as_deref()) {
        (Some(table), Some(chain), Some("nat")) => Some(NatChain {
            family: family(fam),
            table,
            chain,
        }),
        _ => None,
    })
}

/// Replies as a kernel sends them (hex datagrams, one a line, as
/// [`super::ctstats::recorded`] reads them); an absent file is an empty ruleset.
fn recorded(path: &Path) -> Result<Chains, DumpError> {
    let mut out = Chains::default();
    // Bounded, and refused unless a regular file (kfile::read_bounded).
    let text = match super::kfile::read_bounded(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(DumpError::Socket {
                what: "read recorded replies",
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32)),
                hint: "",
            });
        }
    };
    for datagram in super::ctstats::datagrams(&text) {
        let bytes = datagram.map_err(|_| DumpError::Socket {
            what: "read recorded replies",
            errno: Errno::EBADMSG,
            hint: " (a line that is not hex byte pairs)",
        })?;
        take(&bytes, None, &mut out)?;
    }
    Ok(out)
}

/// Encoding replies, for tests and fixture trees.
pub mod encode {
    use super::*;
    use crate::sense::ctnetlink::encode::{attr, message};

    /// A NEWCHAIN message for `table`/`chain` of `ty` in family `fam` (2: ip).
    pub fn chain(fam: u8, table: &str, chain: &str, ty: Option<&str>) -> Vec<u8> {
        let z = |s: &str| [s.as_bytes(), &[0]].concat();
        let mut body = vec![fam, 0, 0, 0];
        body.extend(attr(NFTA_CHAIN_TABLE, &z(table)));
        body.extend(attr(NFTA_CHAIN_NAME, &z(chain)));
        if let Some(ty) = ty {
            body.extend(attr(NFTA_CHAIN_TYPE, &z(ty)));
        }
        message(nft_type(NFT_MSG_NEWCHAIN), 2, &body)
    }

    /// The dump's end.
    pub fn done() -> Vec<u8> {
        message(NLMSG_DONE, 2, &[0; 4])
    }
}

#[cfg(test)]
mod tests {
    use super::encode::{chain, done};
    use super::*;

    #[test]
    fn only_base_chains_of_type_nat_are_kept() {
        let mut d = chain(2, "nat", "POSTROUTING", Some("nat"));
        d.extend(chain(1, "filter", "input", Some("filter")));
        d.extend(chain(1, "filter", "regular", None));
        d.extend(chain(10, "t\u{1b}", "pre", Some("nat")));
        d.extend(done());
        let mut out = Chains::default();
        assert!(take(&d, None, &mut out).unwrap());
        assert_eq!(out.nat.len(), 2);
        assert_eq!(
            (out.nat[0].family, out.nat[0].chain.as_str()),
            ("ip", "POSTROUTING")
        );
        assert_eq!(out.nat[1].family, "ip6");
    }

    #[test]
    fn a_truncated_or_refused_dump_is_an_error_not_a_panic() {
        let d = chain(2, "nat", "POSTROUTING", Some("nat"));
        for cut in 0..d.len() {
            let _ = take(&d[..cut], None, &mut Chains::default());
        }
        let refused = ctnetlink::encode::message(NLMSG_ERROR, 0, &(-1i32).to_ne_bytes());
        assert!(take(&refused, None, &mut Chains::default()).is_err());
    }
}
