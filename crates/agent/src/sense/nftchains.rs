//! Where NAT is configured in nftables: one `NFT_MSG_GETCHAIN` dump (NETLINK_NETFILTER,
//! every family) of the calling thread's namespace for the base chains of type `nat`,
//! then one `NFT_MSG_GETRULE` dump of each (filtered by table and chain) for a rule
//! with an expression that translates (`nat`, `masq`, `redir`): firewalld makes nat
//! chains on every host, empty until masquerading is on. iptables-nft's `nat` table is
//! such chains too, so this covers nft, firewalld and iptables-nft; iptables-legacy is
//! `/proc/net/ip_tables_names` (the caller's).
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
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
/// The dump is inconsistent: the ruleset changed under it.
const NLM_F_DUMP_INTR: u16 = 0x10;

/// The expressions that translate addresses: a rule with one is NAT.
const NAT_EXPRESSIONS: [&str; 3] = ["nat", "masq", "redir"];

/// The most datagrams one dump reads: a ruleset of tens of thousands of chains is cut
/// there (the chains found so far are kept, and the cut is said).
const MAX_DATAGRAMS: usize = 256;

/// The most NAT chains whose rules are read.
const MAX_CHAINS: usize = 16;

/// How long the dumps of one reading may take together.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// The file of recorded replies to the chain dump, in a fixture tree's `netlink/`.
pub const RECORDED: &str = "nft_chains";
/// The file of recorded replies to the rule dump (every rule; filtered as the kernel
/// filters a dump by table and chain).
pub const RECORDED_RULES: &str = "nft_rules";

/// A base chain of type `nat` with a rule that translates (`nat`, `masq`, `redir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatChain {
    /// `ip`, `ip6`, `inet`, ...
    pub family: &'static str,
    /// Its table (as the ruleset spells it; the caller makes it printable).
    pub table: String,
    /// Its name.
    pub chain: String,
    /// The family's number (NFPROTO_*).
    fam: u8,
}

/// What one reading found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chains {
    /// The NAT chains, in the kernel's order.
    pub nat: Vec<NatChain>,
    /// A dump was cut at [`MAX_DATAGRAMS`], or chains beyond [`MAX_CHAINS`] were not
    /// read.
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

/// A string attribute's payload, without its terminating NUL.
fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|&b| b == 0).next().unwrap_or(v)).into_owned()
}

/// The NAT chains of the calling thread's namespace, or of the recorded replies.
pub fn read(replies: Replies<'_>) -> Result<Chains, DumpError> {
    match replies {
        Replies::Kernel => kernel(),
        Replies::Recorded(dir) => recorded(dir),
        Replies::Unavailable => Err(DumpError::Socket {
            what: "socket",
            errno: Errno::ENODEV,
            hint: " (a procfs root other than /proc, without recorded replies)",
        }),
    }
}

/// One dump's messages of `want`, each handed to `f`; true when the dump was cut.
type OnMessage<'a> = dyn FnMut(&Message<'_>) -> Result<(), DumpError> + 'a;

/// What one dump asks for: the chains, or one chain's rules.
enum Ask<'c> {
    Chains,
    Rules(&'c NatChain),
}

/// One dump per ask, its messages to the handler; true when it was cut.
type Dump<'a> = dyn FnMut(Ask<'_>, &mut OnMessage<'_>) -> Result<bool, DumpError> + 'a;

/// The base chains of type nat, then for each its rules, kept when one translates:
/// the same whether `dump` asks the kernel or replays recorded replies.
fn nat_chains(dump: &mut Dump<'_>) -> Result<Chains, DumpError> {
    let mut chains = Vec::new();
    let mut cut = dump(Ask::Chains, &mut |m| {
        if let Some(c) = nat_chain(m)? {
            chains.push(c);
        }
        Ok(())
    })?;
    cut |= chains.len() > MAX_CHAINS;
    let mut out = Chains::default();
    for c in chains.into_iter().take(MAX_CHAINS) {
        let mut translates = false;
        cut |= dump(Ask::Rules(&c), &mut |m| {
            translates |= rule_translates(m, &c)?;
            Ok(())
        })?;
        if translates {
            out.nat.push(c);
        }
    }
    out.cut = cut;
    Ok(out)
}

/// The kernel's answers, all within [`DEADLINE`].
fn kernel() -> Result<Chains, DumpError> {
    let fd = ctnetlink::open_socket()?;
    let timeout = nix::sys::time::TimeVal::new(0, 250_000);
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)
        .map_err(ctnetlink::sock_err("setsockopt"))?;
    let end = std::time::Instant::now() + DEADLINE;
    let mut buf = vec![0u8; RECV_BUF];
    nat_chains(&mut |ask, f| {
        let (msg, fam, attrs) = match ask {
            Ask::Chains => (NFT_MSG_GETCHAIN, 0, Vec::new()),
            Ask::Rules(c) => {
                let mut attrs = encode::attr(NFTA_RULE_TABLE, &nul(&c.table));
                attrs.extend(encode::attr(NFTA_RULE_CHAIN, &nul(&c.chain)));
                (NFT_MSG_GETRULE, c.fam, attrs)
            }
        };
        exchange(fd.as_raw_fd(), &mut buf, end, (msg, fam, &attrs), f)
    })
}

fn nul(s: &str) -> Vec<u8> {
    [s.as_bytes(), &[0]].concat()
}

/// Sends one dump request (`msg`, family, attributes) and reads its answer until its
/// end, the [`MAX_DATAGRAMS`] bound (true: cut) or the deadline (an error).
fn exchange(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
    end: std::time::Instant,
    (msg, fam, attrs): (u16, u8, &[u8]),
    f: &mut OnMessage<'_>,
) -> Result<bool, DumpError> {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) ^ std::process::id();
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let mut req = vec![0u8; NLMSG_HDRLEN];
    req[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&nft_type(msg).to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nfgenmsg: the family (AF_UNSPEC: every one), NFNETLINK_V0, res_id 0.
    req.extend([fam, 0, 0, 0]);
    req.extend_from_slice(attrs);
    sendto(fd, &req, &NetlinkAddr::new(0, 0), MsgFlags::empty())
        .map_err(ctnetlink::sock_err("sendto"))?;
    for _ in 0..MAX_DATAGRAMS {
        if std::time::Instant::now() > end {
            return Err(late());
        }
        let n = match ctnetlink::recv_from_kernel(fd, buf) {
            Ok(n) => n,
            Err(ctnetlink::RecvError::Errno(Errno::EINTR)) => continue,
            Err(ctnetlink::RecvError::Errno(Errno::EAGAIN)) => return Err(late()),
            Err(e) => return Err(e.into_dump_error()),
        };
        if take(&buf[..n], Some(seq), f)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn late() -> DumpError {
    DumpError::Socket {
        what: "nftables dump",
        errno: Errno::ETIMEDOUT,
        hint: " (no end within a second)",
    }
}

/// Hands one datagram's messages to `f`; true once the dump's end was in it. A dump
/// the kernel ended with an error, or flagged inconsistent, is an error: a ruleset
/// read in part proves nothing.
fn take(datagram: &[u8], seq: Option<u32>, f: &mut OnMessage<'_>) -> Result<bool, DumpError> {
    let mut done = false;
    let refused = |errno| DumpError::Socket {
        what: "nftables dump",
        errno,
        hint: "",
    };
    ctnetlink::for_each_message(datagram, |m: Message<'_>| -> Result<bool, DumpError> {
        if seq.is_some_and(|s| s != m.seq) {
            return Ok(true);
        }
        if m.flags & NLM_F_DUMP_INTR != 0 {
            return Err(DumpError::Socket {
                what: "nftables dump",
                errno: Errno::EINTR,
                hint: " (the ruleset changed during the dump)",
            });
        }
        match m.ty {
            NLMSG_DONE => match m.error_code()? {
                Some(errno) => Err(refused(errno)),
                None => {
                    done = true;
                    Ok(false)
                }
            },
            NLMSG_ERROR => match m.error_code()? {
                Some(errno) => Err(refused(errno)),
                None => Ok(true),
            },
            _ => f(&m).map(|()| true),
        }
    })?;
    Ok(done)
}

/// The chain of one NEWCHAIN message, when it is a base chain of type `nat`.
fn nat_chain(m: &Message<'_>) -> Result<Option<NatChain>, ParseError> {
    if m.ty != nft_type(NFT_MSG_NEWCHAIN) {
        return Ok(None);
    }
    let (fam, rest) = body(m)?;
    let (mut table, mut chain, mut ty) = (None, None, None);
    ctnetlink::attrs(rest, m.offset + NFGENMSG_LEN, |t, v, _| {
        match t {
            NFTA_CHAIN_TABLE => table = Some(text(v)),
            NFTA_CHAIN_NAME => chain = Some(text(v)),
            NFTA_CHAIN_TYPE => ty = Some(text(v)),
            _ => {}
        }
        Ok(())
    })?;
    Ok(match (table, chain, ty.as_deref()) {
        (Some(table), Some(chain), Some("nat")) => Some(NatChain {
            family: family(fam),
            table,
            chain,
            fam,
        }),
        _ => None,
    })
}

/// A message's nfgenmsg family and its attributes.
fn body<'m>(m: &Message<'m>) -> Result<(u8, &'m [u8]), ParseError> {
    match m.body.first() {
        Some(&fam) => Ok((fam, m.body.get(NFGENMSG_LEN..).unwrap_or_default())),
        None => Err(ParseError::Truncated {
            what: "nfgenmsg",
            offset: m.offset,
            need: NFGENMSG_LEN,
            have: 0,
        }),
    }
}

/// Whether a NEWRULE message is a rule of chain `c` with an expression that translates.
fn rule_translates(m: &Message<'_>, c: &NatChain) -> Result<bool, ParseError> {
    if m.ty != nft_type(NFT_MSG_NEWRULE) {
        return Ok(false);
    }
    let (fam, rest) = body(m)?;
    let (mut table, mut chain, mut translates) = (None, None, false);
    ctnetlink::attrs(rest, m.offset + NFGENMSG_LEN, |t, v, at| {
        match t {
            NFTA_RULE_TABLE => table = Some(text(v)),
            NFTA_RULE_CHAIN => chain = Some(text(v)),
            NFTA_RULE_EXPRESSIONS => {
                ctnetlink::nested(v, at, (NFTA_LIST_ELEM, NFTA_EXPR_NAME), |name| {
                    translates |= NAT_EXPRESSIONS.contains(&text(name).as_str());
                })?
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(translates
        && fam == c.fam
        && table.as_deref() == Some(c.table.as_str())
        && chain.as_deref() == Some(c.chain.as_str()))
}

/// Replies as a kernel sends them, `nft_chains` then `nft_rules` under `dir` (hex
/// datagrams, one a line, as [`super::ctstats::recorded`] reads them); an absent file
/// is an empty ruleset.
fn recorded(dir: &Path) -> Result<Chains, DumpError> {
    nat_chains(&mut |ask, f| {
        let file = match ask {
            Ask::Chains => RECORDED,
            Ask::Rules(_) => RECORDED_RULES,
        };
        replay(&dir.join(file), f).map(|()| false)
    })
}

/// Every message of a recorded file, to `f`.
fn replay(path: &Path, f: &mut OnMessage<'_>) -> Result<(), DumpError> {
    // Bounded, and refused unless a regular file (kfile::read_bounded).
    let text = match super::kfile::read_bounded(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
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
        take(&bytes, None, f)?;
    }
    Ok(())
}

/// Encoding replies, for tests and fixture trees.
pub mod encode {
    use super::*;
    pub use crate::sense::ctnetlink::encode::attr;
    use crate::sense::ctnetlink::encode::message;

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

    /// A NEWRULE message of `table`/`chain` in family `fam` whose expressions are
    /// `exprs` (by name: `payload`, `cmp`, `masq`, ...).
    pub fn rule(fam: u8, table: &str, chain: &str, exprs: &[&str]) -> Vec<u8> {
        let z = |s: &str| [s.as_bytes(), &[0]].concat();
        let mut list = Vec::new();
        for e in exprs {
            list.extend(attr(NFTA_LIST_ELEM | 0x8000, &attr(NFTA_EXPR_NAME, &z(e))));
        }
        let mut body = vec![fam, 0, 0, 0];
        body.extend(attr(NFTA_RULE_TABLE, &z(table)));
        body.extend(attr(NFTA_RULE_CHAIN, &z(chain)));
        body.extend(attr(NFTA_RULE_EXPRESSIONS | 0x8000, &list));
        message(nft_type(NFT_MSG_NEWRULE), 2, &body)
    }

    /// The dump's end.
    pub fn done() -> Vec<u8> {
        message(NLMSG_DONE, 2, &[0; 4])
    }
}

#[cfg(test)]
mod tests {
    use super::encode::{chain, done, rule};
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn only_nat_base_chains_with_a_rule_that_translates_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let chains = [
            chain(2, "nat", "POSTROUTING", Some("nat")),
            chain(1, "filter", "input", Some("filter")),
            chain(1, "filter", "regular", None),
            chain(10, "t\u{1b}", "pre", Some("nat")),
            chain(1, "firewalld", "nat_POSTROUTING", Some("nat")),
            done(),
        ];
        let rules = [
            rule(2, "nat", "POSTROUTING", &["meta", "cmp", "masq"]),
            rule(10, "t\u{1b}", "pre", &["payload", "cmp", "counter"]),
            // A translating rule of another family's table of the same name: not it.
            rule(2, "firewalld", "nat_POSTROUTING", &["nat"]),
            rule(1, "filter", "input", &["nat"]),
            done(),
        ];
        let lines = |d: &[Vec<u8>]| d.iter().map(|b| hex(b)).collect::<Vec<_>>().join("\n");
        std::fs::write(dir.path().join(RECORDED), lines(&chains)).unwrap();
        std::fs::write(dir.path().join(RECORDED_RULES), lines(&rules)).unwrap();
        let out = recorded(dir.path()).unwrap();
        assert_eq!(out.nat.len(), 1, "{out:?}");
        let c = &out.nat[0];
        assert_eq!(
            (c.family, c.table.as_str(), c.chain.as_str()),
            ("ip", "nat", "POSTROUTING")
        );
        // No rules recorded: no chain proves NAT.
        std::fs::remove_file(dir.path().join(RECORDED_RULES)).unwrap();
        assert!(recorded(dir.path()).unwrap().nat.is_empty());
    }

    #[test]
    fn a_truncated_refused_failed_or_interrupted_dump_is_an_error_not_a_panic() {
        let mut keep = |m: &Message<'_>| nat_chain(m).map(|_| ()).map_err(DumpError::from);
        let d = rule(2, "nat", "POSTROUTING", &["masq"]);
        for cut in 0..d.len() {
            let _ = take(&d[..cut], None, &mut keep);
            let mut f = |m: &Message<'_>| {
                let c = nat_chain(m)?.unwrap_or(NatChain {
                    family: "ip",
                    table: "nat".into(),
                    chain: "POSTROUTING".into(),
                    fam: 2,
                });
                rule_translates(m, &c).map(|_| ()).map_err(DumpError::from)
            };
            let _ = take(&d[..cut], None, &mut f);
        }
        let refused = ctnetlink::encode::message(NLMSG_ERROR, 0, &(-1i32).to_ne_bytes());
        assert!(take(&refused, None, &mut keep).is_err());
        let failed = ctnetlink::encode::message(NLMSG_DONE, 2, &(-16i32).to_ne_bytes());
        assert!(take(&failed, None, &mut keep).is_err());
        let interrupted = ctnetlink::encode::message(NLMSG_DONE, 2 | NLM_F_DUMP_INTR, &[0; 4]);
        assert!(take(&interrupted, None, &mut keep).is_err());
        assert!(take(&done(), None, &mut keep).unwrap());
    }
}
