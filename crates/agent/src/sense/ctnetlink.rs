//! Reading a conntrack table over ctnetlink: one `IPCTNL_MSG_CT_GET` dump
//! (NETLINK_NETFILTER, `NLM_F_DUMP`, all families) in the calling thread's namespace,
//! each entry parsed in place from the receive buffer and handed to a callback, so the
//! entries are never held: `ctune top` counts them into a
//! [`ctune_core::composition::Composition`] while the dump streams.
//!
//! The parser ([`parse_datagram`]) takes bytes and checks every length before it reads,
//! so bad or truncated messages give a [`ParseError`], never a panic, and its work is
//! linear in the bytes (each step advances by at least four). It reads only what the
//! buckets need and skips every other attribute. Layouts:
//! include/uapi/linux/netlink.h, netfilter/nfnetlink.h, nfnetlink_conntrack.h.

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recvmsg, sendto,
    setsockopt, socket, sockopt,
};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ctune_core::composition::{Family, Flow};
use ctune_core::model::Governed;

pub(crate) const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
/// The dump was inconsistent (the table changed under it): results are approximate.
const NLM_F_DUMP_INTR: u16 = 0x10;
pub(crate) const NFGENMSG_LEN: usize = 4;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;

/// What is wrong with a message, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer bytes than a header needs.
    #[error("netlink message truncated at byte {offset}: {what} needs {need} bytes, {have} left")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where in the datagram.
        offset: usize,
        /// Bytes needed.
        need: usize,
        /// Bytes there.
        have: usize,
    },
    /// A length field smaller than its own header or larger than what contains it.
    #[error("netlink {what} at byte {offset} has a bad length {len} ({room} bytes available)")]
    BadLength {
        /// Message or attribute.
        what: &'static str,
        /// Where in the datagram.
        offset: usize,
        /// The length it claims.
        len: usize,
        /// The room there is.
        room: usize,
    },
    /// The kernel answered with an error.
    #[error("the kernel refused the conntrack dump: {0}")]
    Kernel(nix::errno::Errno),
    /// A message type a conntrack dump does not send.
    #[error("unexpected netlink message type {0:#06x} in a conntrack dump")]
    UnexpectedType(u16),
}

/// What one datagram held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Entries handed to the callback.
    pub entries: u64,
    /// The dump's last message (NLMSG_DONE) was in it.
    pub done: bool,
    /// The kernel flagged the dump inconsistent (NLM_F_DUMP_INTR).
    pub interrupted: bool,
}

pub(crate) fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn be_u16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

/// Netlink alignment: 4 bytes.
fn align(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// Iterates the attributes in `buf` (`base`: its offset in the datagram, for errors),
/// calling `f(type, payload)` for each.
pub(crate) fn attrs(
    buf: &[u8],
    base: usize,
    mut f: impl FnMut(u16, &[u8], usize) -> Result<(), ParseError>,
) -> Result<(), ParseError> {
    let mut at = 0;
    while at < buf.len() {
        let room = buf.len() - at;
        if room < 4 {
            return Err(ParseError::Truncated {
                what: "attribute header",
                offset: base + at,
                need: 4,
                have: room,
            });
        }
        let len = u16_ne(buf, at) as usize;
        if len < 4 || len > room {
            return Err(ParseError::BadLength {
                what: "attribute",
                offset: base + at,
                len,
                room,
            });
        }
        f(
            u16_ne(buf, at + 2) & NLA_TYPE_MASK,
            &buf[at + 4..at + len],
            base + at + 4,
        )?;
        at += align(len).min(room);
    }
    Ok(())
}

/// Calls `f` with the payload of each attribute of type `inner` within an attribute of
/// type `outer` in `buf` (one level down: `buf` is itself a nested attribute's payload).
pub(crate) fn nested(
    buf: &[u8],
    base: usize,
    (outer, inner): (u16, u16),
    mut f: impl FnMut(&[u8]),
) -> Result<(), ParseError> {
    attrs(buf, base, |t, v, off| {
        if t == outer {
            attrs(v, off, |t, v, _| {
                if t == inner {
                    f(v);
                }
                Ok(())
            })?;
        }
        Ok(())
    })
}

/// Parses one conntrack entry's attributes (after the nfgenmsg).
fn parse_entry(family: u8, buf: &[u8], base: usize) -> Result<Flow, ParseError> {
    let mut f = Flow {
        family: Family::from_af(family),
        src: None,
        dst: None,
        proto: 0,
        dst_port: None,
        tcp_state: None,
        status: 0,
        zone: 0,
        mark: 0,
        timeout: None,
    };
    attrs(buf, base, |t, v, off| {
        match t {
            CTA_TUPLE_ORIG => attrs(v, off, |t, v, off| {
                match t {
                    CTA_TUPLE_IP => attrs(v, off, |t, v, _| {
                        let (n, src) = match t {
                            CTA_IP_V4_SRC => (4, true),
                            CTA_IP_V6_SRC => (16, true),
                            CTA_IP_V4_DST => (4, false),
                            CTA_IP_V6_DST => (16, false),
                            _ => return Ok(()),
                        };
                        if let Some(bytes) = v.get(..n) {
                            let mut a = [0u8; 16];
                            a[..n].copy_from_slice(bytes);
                            if src {
                                f.src = Some(a);
                            } else {
                                f.dst = Some(a);
                            }
                        }
                        Ok(())
                    })?,
                    CTA_TUPLE_PROTO => attrs(v, off, |t, v, _| {
                        match t {
                            CTA_PROTO_NUM => f.proto = v.first().copied().unwrap_or(0),
                            CTA_PROTO_DST_PORT => f.dst_port = be_u16(v),
                            _ => {}
                        }
                        Ok(())
                    })?,
                    _ => {}
                }
                Ok(())
            })?,
            CTA_STATUS => f.status = be_u32(v).unwrap_or(0),
            CTA_TIMEOUT => f.timeout = be_u32(v),
            CTA_MARK => f.mark = be_u32(v).unwrap_or(0),
            CTA_ZONE => f.zone = be_u16(v).unwrap_or(0),
            CTA_PROTOINFO => nested(v, off, (CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE), |v| {
                f.tcp_state = v.first().copied();
            })?,
            _ => {}
        }
        Ok(())
    })?;
    // Ports belong to port-based protocols only (ICMP's id is not a port).
    if !matches!(f.proto, 6 | 17 | 33 | 132 | 136) {
        f.dst_port = None;
    }
    Ok(f)
}

/// One netlink message of a datagram, its lengths checked ([`for_each_message`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message<'a> {
    /// `nlmsg_type`.
    pub ty: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`: the request's, in the kernel's answer to it.
    pub seq: u32,
    /// Everything after the 16-byte header.
    pub body: &'a [u8],
    /// Where the body starts in the datagram, for errors.
    pub offset: usize,
}

impl<'a> Message<'a> {
    /// The code of an NLMSG_ERROR message, or the int that ends an NLMSG_DONE (the
    /// dump's own error, if its callback failed): 0 (an acknowledgement, a whole dump)
    /// or an errno.
    pub fn error_code(&self) -> Result<Option<nix::errno::Errno>, ParseError> {
        let Some(code) = self.body.get(..4) else {
            return Err(ParseError::Truncated {
                what: "error code",
                offset: self.offset,
                need: 4,
                have: self.body.len(),
            });
        };
        let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
        // The kernel sends -errno; a hostile i32::MIN must not overflow the negation.
        Ok((code != 0).then(|| nix::errno::Errno::from_raw(code.saturating_neg())))
    }

    /// The type of the request an NLMSG_ERROR answers (the kernel echoes its header after
    /// the code), when the message holds it.
    pub fn error_request(&self) -> Option<u16> {
        self.body
            .get(8..10)
            .map(|t| u16::from_ne_bytes([t[0], t[1]]))
    }

    /// The nfgenmsg that starts a netfilter message: (family, res_id, the attributes and
    /// their offset in the datagram).
    pub fn nfgen(&self) -> Result<(u8, u16, &'a [u8], usize), ParseError> {
        if self.body.len() < NFGENMSG_LEN {
            return Err(ParseError::Truncated {
                what: "nfgenmsg",
                offset: self.offset,
                need: NFGENMSG_LEN,
                have: self.body.len(),
            });
        }
        let res_id = u16::from_be_bytes([self.body[2], self.body[3]]);
        Ok((
            self.body[0],
            res_id,
            &self.body[NFGENMSG_LEN..],
            self.offset + NFGENMSG_LEN,
        ))
    }
}

/// The message type of a ctnetlink message `msg` (`nfnl_msg_type`).
pub(crate) const fn ctnetlink_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg
}

/// Walks the messages of one datagram, checking every length before it reads, handing
/// each to `f`; `f` returns false to stop (after NLMSG_DONE). Linear in the bytes: each
/// step advances by at least a header.
pub(crate) fn for_each_message<E: From<ParseError>>(
    buf: &[u8],
    mut f: impl FnMut(Message<'_>) -> Result<bool, E>,
) -> Result<(), E> {
    let mut at = 0;
    while at < buf.len() {
        let room = buf.len() - at;
        if room < NLMSG_HDRLEN {
            return Err(ParseError::Truncated {
                what: "message header",
                offset: at,
                need: NLMSG_HDRLEN,
                have: room,
            }
            .into());
        }
        let len = u32_ne(buf, at) as usize;
        if len < NLMSG_HDRLEN || len > room {
            return Err(ParseError::BadLength {
                what: "message",
                offset: at,
                len,
                room,
            }
            .into());
        }
        let message = Message {
            ty: u16_ne(buf, at + 4),
            flags: u16_ne(buf, at + 6),
            seq: u32_ne(buf, at + 8),
            body: &buf[at + NLMSG_HDRLEN..at + len],
            offset: at + NLMSG_HDRLEN,
        };
        if !f(message)? {
            break;
        }
        at += align(len).min(room);
    }
    Ok(())
}

/// Parses one datagram of a conntrack dump, calling `on_entry` for each entry in it.
pub fn parse_datagram(buf: &[u8], on_entry: &mut dyn FnMut(&Flow)) -> Result<Progress, ParseError> {
    let mut p = Progress::default();
    for_each_message(buf, |m| {
        if m.flags & NLM_F_DUMP_INTR != 0 {
            p.interrupted = true;
        }
        match m.ty {
            NLMSG_DONE => {
                // A dump whose callback failed ends with the errno in its DONE.
                if let Some(errno) = m.error_code().ok().flatten() {
                    return Err(ParseError::Kernel(errno));
                }
                p.done = true;
                return Ok(false);
            }
            NLMSG_ERROR => {
                if let Some(errno) = m.error_code()? {
                    return Err(ParseError::Kernel(errno));
                }
            }
            t if t == ctnetlink_type(IPCTNL_MSG_CT_NEW) => {
                let (family, _, attrs, offset) = m.nfgen()?;
                on_entry(&parse_entry(family, attrs, offset)?);
                p.entries += 1;
            }
            NLMSG_NOOP | NLMSG_OVERRUN => {}
            t => return Err(ParseError::UnexpectedType(t)),
        }
        Ok(true)
    })?;
    Ok(p)
}

/// The bounds of one dump.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Stop after this many entries.
    pub max_entries: u64,
    /// Stop after this long.
    pub max_time: Duration,
}

/// How a dump ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Entries read.
    pub entries: u64,
    /// Why the entries read are not the whole table (None: they are).
    pub partial: Option<String>,
    /// The dump was stopped before its end (by a limit): the entries read are the first
    /// the kernel sent. It sends them in hash-table order, and the table's hash is keyed
    /// by a random seed, so they are a random sample of the table's entries (shares are
    /// estimates), not the oldest or the newest.
    pub sampled: bool,
    /// Time taken.
    pub elapsed: Duration,
}

/// Why a dump could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The socket could not be opened, set up, or read.
    #[error("ctnetlink socket: {what}: {errno}{hint}")]
    Socket {
        /// The call that failed.
        what: &'static str,
        /// Its error.
        errno: nix::errno::Errno,
        /// What it usually means.
        hint: &'static str,
    },
    /// A message the parser refused.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

pub(crate) fn sock_err(what: &'static str) -> impl Fn(nix::errno::Errno) -> DumpError {
    move |errno| DumpError::Socket {
        what,
        errno,
        hint: match errno {
            nix::errno::Errno::EPERM | nix::errno::Errno::EACCES => {
                " (ctnetlink needs CAP_NET_ADMIN: run as root)"
            }
            nix::errno::Errno::EPROTONOSUPPORT => " (no nfnetlink in this kernel)",
            _ => "",
        },
    }
}

/// A NETLINK_NETFILTER socket of the calling thread's network namespace (a socket keeps
/// the namespace it was made in), bound to a port the kernel picks.
pub(crate) fn open_socket() -> Result<std::os::fd::OwnedFd, DumpError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(sock_err("socket"))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(sock_err("bind"))?;
    Ok(fd)
}

/// Why no datagram from the kernel could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvError {
    /// recvmsg failed (EINTR and EAGAIN are for the caller to handle).
    Errno(nix::errno::Errno),
    /// A datagram larger than the buffer (MSG_TRUNC): never from a kernel answering
    /// into [`RECV_BUF`].
    Truncated {
        /// Its length.
        len: usize,
        /// The buffer's.
        room: usize,
    },
    /// Only datagrams from other sockets came, this many in a row.
    Foreign(usize),
}

/// The most datagrams from other sockets one receive drops before it gives up.
const MAX_FOREIGN: usize = 64;

/// One datagram from the kernel into `buf`; its length. Any process that can open a
/// netlink socket in the namespace (its root, in a user namespace of its own) can send
/// datagrams to ctune's port, and only the kernel sends from port 0: a datagram from
/// another port is dropped, never parsed as the kernel's answer.
pub(crate) fn recv_from_kernel(fd: std::os::fd::RawFd, buf: &mut [u8]) -> Result<usize, RecvError> {
    for _ in 0..MAX_FOREIGN {
        let mut iov = [std::io::IoSliceMut::new(buf)];
        let (n, flags, from) = match recvmsg::<NetlinkAddr>(fd, &mut iov, None, MsgFlags::MSG_TRUNC)
        {
            Ok(m) => (m.bytes, m.flags, m.address.map(|a| a.pid())),
            Err(e) => return Err(RecvError::Errno(e)),
        };
        if from != Some(0) {
            continue;
        }
        let room = iov[0].len();
        if n > room || flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(RecvError::Truncated { len: n, room });
        }
        return Ok(n);
    }
    Err(RecvError::Foreign(MAX_FOREIGN))
}

impl RecvError {
    /// The error of a read that did not end with EINTR or EAGAIN.
    pub(crate) fn into_dump_error(self) -> DumpError {
        match self {
            RecvError::Errno(e) => sock_err("recv")(e),
            RecvError::Truncated { len, room } => ParseError::BadLength {
                what: "datagram",
                offset: 0,
                len,
                room,
            }
            .into(),
            RecvError::Foreign(n) => DumpError::Socket {
                what: "recv",
                errno: nix::errno::Errno::EBADMSG,
                hint: if n > 0 {
                    " (only datagrams from other processes' sockets came, not the kernel's answer)"
                } else {
                    ""
                },
            },
        }
    }
}

/// The request: a dump of every family's entries (nfgen_family AF_UNSPEC).
fn request(seq: u32) -> [u8; NLMSG_HDRLEN + NFGENMSG_LEN] {
    let mut m = [0u8; NLMSG_HDRLEN + NFGENMSG_LEN];
    m[0..4].copy_from_slice(&((NLMSG_HDRLEN + NFGENMSG_LEN) as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&ctnetlink_type(IPCTNL_MSG_CT_GET).to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nfgenmsg: family 0 (all), version 0 (NFNETLINK_V0), res_id 0.
    m
}

/// The receive buffer: the kernel fills a dump datagram up to 32 KiB (more with a
/// larger buffer on newer kernels); 64 KiB holds any, and MSG_TRUNC says if not.
pub(crate) const RECV_BUF: usize = 64 * 1024;

/// Dumps the calling thread's namespace's table, calling `on_entry` for each entry,
/// within `limits`. A dump cut short by a limit or flagged inconsistent by the kernel
/// is returned with `partial` saying why; one cut short by a limit is also `sampled`
/// (its entries are a random sample, see [`Outcome::sampled`]).
pub fn dump(limits: &Limits, on_entry: &mut dyn FnMut(&Flow)) -> Result<Outcome, DumpError> {
    let started = Instant::now();
    let fd = open_socket()?;
    let seq = 1;
    sendto(
        fd.as_raw_fd(),
        &request(seq),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(sock_err("sendto"))?;
    let mut buf = vec![0u8; RECV_BUF];
    let mut out = Outcome::default();
    let mut interrupted = false;
    loop {
        if started.elapsed() >= limits.max_time {
            out.partial = Some(format!(
                "read the first {} entries the kernel sent in {} (--max-time)",
                out.entries,
                humantime::format_duration(limits.max_time)
            ));
            out.sampled = true;
            break;
        }
        // A recv never waits past the time left (the kernel answers a dump at once; this
        // only guards against a kernel that does not). A datagram the kernel is filling
        // is not interrupted: one walks at most the hash table's buckets.
        let left = limits.max_time.saturating_sub(started.elapsed());
        let tv = nix::sys::time::TimeVal::new(
            left.as_secs().min(i64::MAX as u64) as i64,
            i64::from(left.subsec_micros().max(1)),
        );
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(sock_err("setsockopt"))?;
        let n = match recv_from_kernel(fd.as_raw_fd(), &mut buf) {
            Ok(n) => n,
            Err(RecvError::Errno(nix::errno::Errno::EINTR)) => continue,
            Err(RecvError::Errno(nix::errno::Errno::EAGAIN)) => {
                out.partial = Some(format!(
                    "read {} entries, then the kernel stopped answering (--max-time)",
                    out.entries
                ));
                out.sampled = true;
                break;
            }
            Err(e) => return Err(e.into_dump_error()),
        };
        let max = limits.max_entries;
        let mut taken = out.entries;
        let mut more = false;
        let p = parse_datagram(&buf[..n], &mut |f| {
            if taken < max {
                on_entry(f);
                taken += 1;
            } else {
                more = true;
            }
        })?;
        out.entries = taken;
        interrupted |= p.interrupted;
        // At the cap, one more datagram tells a table of exactly `max` entries (only
        // NLMSG_DONE follows) from a larger one.
        if more {
            out.partial = Some(format!(
                "read the first {taken} entries the kernel sent (--max-entries)"
            ));
            out.sampled = true;
            break;
        }
        if p.done {
            break;
        }
    }
    if interrupted && out.partial.is_none() {
        out.partial =
            Some("the table changed during the dump (NLM_F_DUMP_INTR): counts approximate".into());
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

/// Dumps the calling thread's namespace and counts its entries by the timeout key that
/// governs each ([`ctune_core::composition::governing_key`]): the sample the agent's
/// decision weighs timeouts by, taken at `taken_at` on ctune's clock.
pub fn governed(limits: &Limits, taken_at: Duration) -> Result<Governed, DumpError> {
    let mut by_key: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let mut entries = 0;
    let outcome = dump(limits, &mut |f| {
        entries += 1;
        if let Some(k) = ctune_core::composition::governing_key(f) {
            *by_key.entry(k).or_default() += 1;
        }
    })?;
    Ok(Governed {
        entries,
        by_key: by_key
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect(),
        // Stopped at a bound (a sample); a dump the kernel flagged as changed under it
        // read the table to its end, approximately (entries came and went meanwhile).
        partial: outcome.sampled,
        taken_at,
        age_secs: 0,
    })
}

/// The inverse of the parser, for its tests and the fuzz test: messages built as the
/// kernel lays them out (native byte order, 4-byte alignment, sequence and port 0).
pub mod encode {
    /// One netlink attribute, padded to 4 bytes.
    pub fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    /// One netlink message: the 16-byte header, then `body`.
    pub fn message(ty: u16, flags: u16, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(body);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::encode::{attr as nla, message as msg};

    fn entry() -> Vec<u8> {
        let mut ip = nla(CTA_IP_V4_SRC, &[10, 1, 2, 3]);
        ip.extend(nla(CTA_IP_V4_DST, &[10, 9, 8, 7]));
        let ip = nla(0x8000 | CTA_TUPLE_IP, &ip);
        let mut proto = nla(CTA_PROTO_NUM, &[6]);
        proto.extend(nla(CTA_PROTO_DST_PORT, &443u16.to_be_bytes()));
        let mut tuple = ip;
        tuple.extend(nla(0x8000 | CTA_TUPLE_PROTO, &proto));
        let mut body = vec![2, 0, 0, 0];
        body.extend(nla(0x8000 | CTA_TUPLE_ORIG, &tuple));
        body.extend(nla(CTA_STATUS, &6u32.to_be_bytes()));
        body.extend(nla(CTA_TIMEOUT, &431_999u32.to_be_bytes()));
        body.extend(nla(CTA_MARK, &7u32.to_be_bytes()));
        body.extend(nla(CTA_ZONE, &3u16.to_be_bytes()));
        let state = nla(CTA_PROTOINFO_TCP_STATE, &[3]);
        body.extend(nla(
            0x8000 | CTA_PROTOINFO,
            &nla(0x8000 | CTA_PROTOINFO_TCP, &state),
        ));
        msg(0x100, 2, &body)
    }

    #[test]
    fn an_entry_and_done() {
        let mut d = entry();
        d.extend(msg(NLMSG_DONE, 2, &[0; 4]));
        let mut seen = Vec::new();
        let p = parse_datagram(&d, &mut |f| seen.push(*f)).unwrap();
        assert_eq!(
            p,
            Progress {
                entries: 1,
                done: true,
                interrupted: false
            }
        );
        let f = seen[0];
        assert_eq!(f.family, Family::V4);
        assert_eq!(&f.src.unwrap()[..4], &[10, 1, 2, 3]);
        assert_eq!(&f.dst.unwrap()[..4], &[10, 9, 8, 7]);
        assert_eq!(
            (f.proto, f.dst_port, f.tcp_state, f.status, f.mark, f.zone),
            (6, Some(443), Some(3), 6, 7, 3)
        );
        assert_eq!(f.timeout, Some(431_999));
    }

    #[test]
    fn errors_are_named() {
        let d = entry();
        let err = parse_datagram(&d[..d.len() - 3], &mut |_| {}).unwrap_err();
        assert!(matches!(err, ParseError::BadLength { .. }), "{err}");
        let err = parse_datagram(&d[..10], &mut |_| {}).unwrap_err();
        assert!(matches!(err, ParseError::Truncated { .. }), "{err}");
        let e = msg(NLMSG_ERROR, 0, &(-1i32).to_ne_bytes());
        assert_eq!(
            parse_datagram(&e, &mut |_| {}).unwrap_err(),
            ParseError::Kernel(nix::errno::Errno::EPERM)
        );
        // An error code no kernel sends, whose negation would overflow.
        let min = msg(NLMSG_ERROR, 0, &i32::MIN.to_ne_bytes());
        assert!(matches!(
            parse_datagram(&min, &mut |_| {}).unwrap_err(),
            ParseError::Kernel(_)
        ));
        let odd = msg(0x0201, 0, &[]);
        assert_eq!(
            parse_datagram(&odd, &mut |_| {}).unwrap_err(),
            ParseError::UnexpectedType(0x0201)
        );
        let intr = msg(NLMSG_DONE, NLM_F_DUMP_INTR, &[0; 4]);
        assert!(parse_datagram(&intr, &mut |_| {}).unwrap().interrupted);
    }
}
