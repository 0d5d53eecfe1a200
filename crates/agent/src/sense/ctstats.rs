//! A namespace's conntrack counters over ctnetlink: `IPCTNL_MSG_CT_GET_STATS_CPU` (a dump
//! of one message per possible CPU, what `conntrack -S` shows) and
//! `IPCTNL_MSG_CT_GET_STATS` (the namespace's count), for kernels without
//! `/proc/net/stat/nf_conntrack` (`CONFIG_NF_CONNTRACK_PROCFS` off: Ubuntu's, OpenWrt's).
//!
//! Both requests go out in one datagram on a socket of the calling thread's namespace (a
//! socket keeps the namespace it was made in). The replies are checked as strictly as
//! the procfs file is: a CPU twice, a counter that is not 4 bytes or comes twice in one
//! message, CPUs that do not carry the same counters, no count or no end of the dump are
//! each a named [`StatsError`], never a partial sum. Attribute types this ctune does not
//! know (a newer kernel's counters) are skipped, as conntrack-tools skips them
//! (`mnl_attr_type_valid` in its stats callback), and counted in [`CpuStats::unknown`].
//!
//! Each counter is named by the column the procfs file gives the same field of
//! `struct ip_conntrack_stat`, so both sources fill one [`ConntrackStat`] with one
//! meaning (and one clash split, [`ctune_core::model::stat::split_drops`]).
//! Layouts: include/uapi/linux/netfilter/nfnetlink_conntrack.h (`enum ctattr_stats`,
//! `enum ctattr_stats_global`), net/netfilter/nf_conntrack_netlink.c
//! (`ctnetlink_ct_stat_cpu_fill_info`, `ctnetlink_stat_ct_fill_info`).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, NetlinkAddr, sendto, setsockopt, sockopt};

use crate::sense::ctnetlink::{
    self, DumpError, Message, NFGENMSG_LEN, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_HDRLEN, ParseError, RECV_BUF, RecvError, ctnetlink_type,
};
use crate::sense::kfile::{self, FileError};
use ctune_core::model::{ConntrackStat, StatSource};

const IPCTNL_MSG_CT_GET_STATS_CPU: u16 = 4;
const IPCTNL_MSG_CT_GET_STATS: u16 = 5;
const CTA_STATS_GLOBAL_ENTRIES: u16 = 1;
const CTA_STATS_GLOBAL_MAX_ENTRIES: u16 = 2;

/// `enum ctattr_stats` in order (attribute type = index + 1), each named by the procfs
/// column of the same `struct ip_conntrack_stat` field (`ct_cpu_seq_show`): ERROR is
/// `icmp_error`, CLASH_RESOLVE `clashres`, CHAIN_TOOLONG `chainlength`. SEARCHED, NEW,
/// DELETE and DELETE_LIST went in 4.9 (8e8118f89313), IGNORE in 5.10 (4afc41dfa5a7),
/// when CLASH_RESOLVE came (bc92470413f3); CHAIN_TOOLONG came in 5.15 (d7e7747ac5c2).
/// docs/kernels.md has the matrix.
pub const CPU_COUNTERS: [&str; 15] = [
    "searched",
    "found",
    "new",
    "invalid",
    "ignore",
    "delete",
    "delete_list",
    "insert",
    "insert_failed",
    "drop",
    "early_drop",
    "icmp_error",
    "search_restart",
    "clashres",
    "chainlength",
];

/// Why a namespace's counters could not be had over ctnetlink.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The socket could not be opened or used.
    #[error("{0}")]
    Socket(#[from] DumpError),
    /// A message whose framing is wrong.
    #[error("ctnetlink statistics: {0}")]
    Frame(#[from] ParseError),
    /// The kernel answered a request with an error.
    #[error("ctnetlink statistics: the kernel refused {request}: {errno}{}", kernel_hint(*errno))]
    Kernel {
        /// Which request: `IPCTNL_MSG_CT_GET_STATS`, `IPCTNL_MSG_CT_GET_STATS_CPU`, or
        /// "the request" when the kernel did not echo it.
        request: &'static str,
        /// Its errno.
        errno: Errno,
    },
    /// An answer to another request (another sequence number): never sent by a kernel
    /// answering this one.
    #[error("ctnetlink statistics: an answer to another request (sequence {0})")]
    OtherRequest(u32),
    /// A CPU answered twice.
    #[error("ctnetlink statistics: cpu {0} answered twice")]
    RepeatedCpu(u16),
    /// A counter that is not a 32-bit value.
    #[error("ctnetlink statistics: cpu {cpu}: {name} has {len} bytes, not 4")]
    BadCounter {
        /// The CPU's message.
        cpu: u16,
        /// The counter.
        name: &'static str,
        /// Its payload's length.
        len: usize,
    },
    /// A counter twice in one CPU's message.
    #[error("ctnetlink statistics: cpu {cpu}: {name} twice in one message")]
    DuplicateCounter {
        /// The CPU's message.
        cpu: u16,
        /// The counter.
        name: &'static str,
    },
    /// CPUs that carry different counters: their sum would mix counted and uncounted CPUs.
    #[error(
        "ctnetlink statistics: cpu {cpu} {} {name}, cpu {first} {}",
        if *present { "carries" } else { "lacks" },
        if *present { "did not" } else { "had it" }
    )]
    Inconsistent {
        /// The CPU that differs.
        cpu: u16,
        /// The first CPU's message, which set the counters every CPU must carry.
        first: u16,
        /// The counter.
        name: &'static str,
        /// Whether `cpu` has it (and `first` not).
        present: bool,
    },
    /// The global statistics carry a value that is not 32 bits.
    #[error("ctnetlink statistics: the global {name} has {len} bytes, not 4")]
    BadGlobal {
        /// `entries` or `max`.
        name: &'static str,
        /// Its payload's length.
        len: usize,
    },
    /// The global statistics came twice, or a value twice in them.
    #[error("ctnetlink statistics: the global {0} came twice")]
    RepeatedGlobal(&'static str),
    /// No answer within the reply timeout (1 s).
    #[error("ctnetlink statistics: no answer from the kernel within 1 s")]
    Timeout,
    /// A message type a statistics reply does not have.
    #[error("ctnetlink statistics: unexpected message type {0:#06x}")]
    UnexpectedType(u16),
    /// The replies ended without something a whole answer has.
    #[error("ctnetlink statistics: the reply has {0}")]
    Incomplete(&'static str),
    /// A recorded reply (a fixture tree) could not be read.
    #[error("{0}")]
    Recorded(FileError),
    /// No kernel to ask: the procfs root is not the real /proc and no replies are recorded.
    #[error(
        "ctnetlink statistics: not read (a procfs root other than /proc, without recorded replies)"
    )]
    Unavailable,
}

fn kernel_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::EPERM | Errno::EACCES => {
            " (ctnetlink needs CAP_NET_ADMIN: run as root, and a sandbox must keep that capability)"
        }
        // nfnetlink_rcv_msg: no subsystem registered, even after request_module.
        Errno::EINVAL | Errno::EOPNOTSUPP => {
            " (no ctnetlink in this kernel: load nf_conntrack_netlink; on OpenWrt install kmod-nf-conntrack-netlink)"
        }
        _ => "",
    }
}

/// The replies to one statistics request, checked and summed as they come.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Each CPU that answered, once.
    cpus: BTreeSet<u16>,
    /// The first CPU and the counters it carried (bit i: [`CPU_COUNTERS`]`[i]`): every
    /// other CPU must carry the same.
    layout: Option<(u16, u16)>,
    /// Each counter summed over the CPUs.
    sums: [u64; 15],
    /// The namespace's count (`CTA_STATS_GLOBAL_ENTRIES`).
    entries: Option<u64>,
    /// The global max (`CTA_STATS_GLOBAL_MAX_ENTRIES`, sent since 4.18).
    max: Option<u64>,
    /// The dump's NLMSG_DONE came.
    done: bool,
    /// The sequence numbers of the two requests, when checked (a live exchange; a
    /// recorded reply's numbers are whatever the recording had).
    expect: Option<[u32; 2]>,
    /// Attributes of types ctune does not know, skipped.
    pub unknown: u64,
}

impl CpuStats {
    /// Takes one datagram of replies. Returns whether the answer is whole (the count and
    /// the dump's end both came).
    pub fn take(&mut self, datagram: &[u8]) -> Result<bool, StatsError> {
        ctnetlink::for_each_message(datagram, |m| self.message(&m))?;
        Ok(self.done && self.entries.is_some())
    }

    /// Checks the answers against the sequence numbers of the requests.
    fn expecting(seqs: [u32; 2]) -> CpuStats {
        CpuStats {
            expect: Some(seqs),
            ..CpuStats::default()
        }
    }

    fn message(&mut self, m: &Message<'_>) -> Result<bool, StatsError> {
        if let Some(seqs) = self.expect
            && !seqs.contains(&m.seq)
        {
            return Err(StatsError::OtherRequest(m.seq));
        }
        match m.ty {
            NLMSG_DONE => {
                if let Some(errno) = m.error_code().ok().flatten() {
                    let request = "IPCTNL_MSG_CT_GET_STATS_CPU";
                    return Err(StatsError::Kernel { request, errno });
                }
                self.done = true;
            }
            NLMSG_ERROR => {
                if let Some(errno) = m.error_code()? {
                    let request = match m.error_request().map(|t| t & 0xff) {
                        Some(IPCTNL_MSG_CT_GET_STATS) => "IPCTNL_MSG_CT_GET_STATS",
                        Some(IPCTNL_MSG_CT_GET_STATS_CPU) => "IPCTNL_MSG_CT_GET_STATS_CPU",
                        _ => "the request",
                    };
                    return Err(StatsError::Kernel { request, errno });
                }
            }
            t if t == ctnetlink_type(IPCTNL_MSG_CT_GET_STATS_CPU) => self.cpu(m)?,
            t if t == ctnetlink_type(IPCTNL_MSG_CT_GET_STATS) => self.global(m)?,
            t => return Err(StatsError::UnexpectedType(t)),
        }
        Ok(true)
    }

    fn cpu(&mut self, m: &Message<'_>) -> Result<(), StatsError> {
        let (_, cpu, body, offset) = m.nfgen()?;
        if !self.cpus.insert(cpu) {
            return Err(StatsError::RepeatedCpu(cpu));
        }
        let mut carried = 0u16;
        let mut values = [0u64; 15];
        let mut unknown = 0;
        let mut bad = None;
        ctnetlink::attrs(body, offset, |ty, v, _| {
            let Some(i) = usize::from(ty).checked_sub(1).filter(|i| *i < 15) else {
                unknown += 1;
                return Ok(());
            };
            let name = CPU_COUNTERS[i];
            let value = ctnetlink::be_u32(v).filter(|_| v.len() == 4);
            match value {
                _ if carried & (1 << i) != 0 => {
                    bad.get_or_insert(StatsError::DuplicateCounter { cpu, name });
                }
                None => {
                    bad.get_or_insert(StatsError::BadCounter {
                        cpu,
                        name,
                        len: v.len(),
                    });
                }
                Some(x) => values[i] = u64::from(x),
            }
            carried |= 1 << i;
            Ok(())
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        let (first, layout) = *self.layout.get_or_insert((cpu, carried));
        if let Some(i) = (0..15).find(|i| (carried ^ layout) & (1 << i) != 0) {
            return Err(StatsError::Inconsistent {
                cpu,
                first,
                name: CPU_COUNTERS[i],
                present: carried & (1 << i) != 0,
            });
        }
        for (sum, v) in self.sums.iter_mut().zip(values) {
            *sum = sum.saturating_add(v);
        }
        self.unknown += unknown;
        Ok(())
    }

    fn global(&mut self, m: &Message<'_>) -> Result<(), StatsError> {
        let (_, _, body, offset) = m.nfgen()?;
        let (mut entries, mut max) = (None, None);
        let mut bad = None;
        ctnetlink::attrs(body, offset, |ty, v, _| {
            let (name, slot) = match ty {
                CTA_STATS_GLOBAL_ENTRIES => ("entries", &mut entries),
                CTA_STATS_GLOBAL_MAX_ENTRIES => ("max", &mut max),
                _ => {
                    self.unknown += 1;
                    return Ok(());
                }
            };
            match ctnetlink::be_u32(v).filter(|_| v.len() == 4) {
                _ if slot.is_some() => {
                    bad.get_or_insert(StatsError::RepeatedGlobal(name));
                }
                Some(x) => *slot = Some(u64::from(x)),
                None => {
                    bad.get_or_insert(StatsError::BadGlobal { name, len: v.len() });
                }
            }
            Ok(())
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        if self.entries.is_some() {
            return Err(StatsError::RepeatedGlobal("statistics"));
        }
        self.entries = Some(entries.ok_or(StatsError::Incomplete(
            "no count (CTA_STATS_GLOBAL_ENTRIES)",
        ))?);
        self.max = max;
        Ok(())
    }

    /// The counters, once the answer is whole.
    pub fn finish(self) -> Result<ConntrackStat, StatsError> {
        let (entries, Some((_, layout))) = (self.entries, self.layout) else {
            return Err(StatsError::Incomplete("no per-CPU message"));
        };
        let entries =
            entries.ok_or(StatsError::Incomplete("no count (IPCTNL_MSG_CT_GET_STATS)"))?;
        if !self.done {
            return Err(StatsError::Incomplete(
                "no end of the per-CPU dump (NLMSG_DONE)",
            ));
        }
        let counters = (0..15)
            .filter(|i| layout & (1 << i) != 0)
            .map(|i| (CPU_COUNTERS[i].to_string(), self.sums[i]))
            .collect();
        Ok(ConntrackStat {
            entries,
            counters,
            source: StatSource::Ctnetlink,
        })
    }

    /// The global max the kernel sent with the count, when it did (4.18 and later).
    pub fn max(&self) -> Option<u64> {
        self.max
    }
}

/// Where the replies come from.
#[derive(Debug, Clone, Copy)]
pub enum Replies<'a> {
    /// The kernel of the calling thread's namespace.
    Kernel,
    /// Replies as a kernel sends them, in a fixture tree's `netlink/` directory (captured
    /// from this host's kernel, or written from another's sources by
    /// fixtures/tools/kernel_trees.py; [`recorded`] says the format).
    Recorded(&'a Path),
    /// None to be had.
    Unavailable,
}

/// The counters of the calling thread's namespace.
pub fn read(replies: Replies<'_>) -> Result<ConntrackStat, StatsError> {
    match replies {
        Replies::Kernel => kernel(),
        Replies::Recorded(dir) => recorded(dir),
        Replies::Unavailable => Err(StatsError::Unavailable),
    }
}

/// Both requests, one after the other in one datagram: the count (answered at once) and
/// the per-CPU dump, numbered `seqs`.
fn requests(seqs: [u32; 2]) -> [u8; 2 * (NLMSG_HDRLEN + NFGENMSG_LEN)] {
    let mut out = [0u8; 2 * (NLMSG_HDRLEN + NFGENMSG_LEN)];
    let len = (NLMSG_HDRLEN + NFGENMSG_LEN) as u32;
    for (i, (msg, flags)) in [
        (IPCTNL_MSG_CT_GET_STATS, NLM_F_REQUEST),
        (IPCTNL_MSG_CT_GET_STATS_CPU, NLM_F_REQUEST | NLM_F_DUMP),
    ]
    .into_iter()
    .enumerate()
    {
        let m = &mut out[i * len as usize..];
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&ctnetlink_type(msg).to_ne_bytes());
        m[6..8].copy_from_slice(&flags.to_ne_bytes());
        m[8..12].copy_from_slice(&seqs[i].to_ne_bytes());
        // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0.
    }
    out
}

/// A socket kept per thread, with its receive buffer: the agent asks its own namespace
/// every step, and a kept socket costs one sendto and two or three recvs instead of a
/// socket, a bind and a close. Forgotten when the thread enters another namespace
/// ([`forget_kept`], called by [`crate::sense::netns::enter`]) and after any failure,
/// so a late reply to a failed exchange is never read as the next one's. A kept socket
/// keeps its namespace alive: only the agent's own namespace is kept for long (the
/// reader threads that visit the others end with each step).
struct Kept {
    fd: OwnedFd,
    buf: Vec<u8>,
}

thread_local! {
    static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// Drops this thread's kept socket.
pub fn forget_kept() {
    KEPT.with(|k| k.borrow_mut().take());
}

/// How long a reply may take: the kernel answers both requests at once, from memory;
/// this only bounds a step against a kernel that does not.
const REPLY_TIMEOUT: nix::sys::time::TimeVal = nix::sys::time::TimeVal::new(1, 0);

fn kernel() -> Result<ConntrackStat, StatsError> {
    let mut kept = match KEPT.with(|k| k.borrow_mut().take()) {
        Some(k) => k,
        None => {
            let fd = ctnetlink::open_socket()?;
            setsockopt(&fd, sockopt::ReceiveTimeout, &REPLY_TIMEOUT)
                .map_err(ctnetlink::sock_err("setsockopt"))?;
            Kept {
                fd,
                buf: vec![0u8; RECV_BUF],
            }
        }
    };
    let stat = exchange(&mut kept)?;
    KEPT.with(|k| *k.borrow_mut() = Some(kept));
    Ok(stat)
}

/// The next pair of sequence numbers: a process's exchanges never share one, and the
/// first is drawn from the clock, not 1, so no other process can guess them.
fn next_seqs() -> [u32; 2] {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seq = match NEXT.load(Ordering::Relaxed) {
        0 => {
            let start = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.subsec_nanos() | 1);
            let _ = NEXT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
            NEXT.fetch_add(2, Ordering::Relaxed)
        }
        _ => NEXT.fetch_add(2, Ordering::Relaxed),
    };
    [seq, seq.wrapping_add(1)]
}

fn exchange(kept: &mut Kept) -> Result<ConntrackStat, StatsError> {
    let fd = kept.fd.as_raw_fd();
    let seqs = next_seqs();
    sendto(
        fd,
        &requests(seqs),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(ctnetlink::sock_err("sendto"))?;
    let mut stats = CpuStats::expecting(seqs);
    // Each datagram holds at least one message; 4096 CPUs fit in fewer than 64.
    for _ in 0..64 {
        let n = match ctnetlink::recv_from_kernel(fd, &mut kept.buf) {
            Ok(n) => n,
            Err(RecvError::Errno(Errno::EINTR)) => continue,
            Err(RecvError::Errno(Errno::EAGAIN)) => return Err(StatsError::Timeout),
            Err(e) => return Err(e.into_dump_error().into()),
        };
        if stats.take(&kept.buf[..n])? {
            return stats.finish();
        }
    }
    Err(StatsError::Incomplete("no end after 64 datagrams"))
}

/// The file of recorded replies to the per-CPU dump, in a fixture tree's `netlink/`.
pub const RECORDED_CPU: &str = "ct_stats_cpu";
/// The file of the recorded reply to IPCTNL_MSG_CT_GET_STATS.
pub const RECORDED_GLOBAL: &str = "ct_stats";

/// Replies as a kernel sends them: `ct_stats` then `ct_stats_cpu` under `dir`, each a
/// text file of datagrams, one a line as hex byte pairs (whitespace between them
/// allowed; `#` starts a comment; blank lines skipped), in the byte order of a
/// little-endian machine (x86_64, arm64), through the same checks as a live answer.
pub fn recorded(dir: &Path) -> Result<ConntrackStat, StatsError> {
    let mut stats = CpuStats::default();
    for name in [RECORDED_GLOBAL, RECORDED_CPU] {
        let path = dir.join(name);
        let text = kfile::read_text(&path).map_err(StatsError::Recorded)?;
        for datagram in datagrams(&text) {
            let bytes = datagram.map_err(|line| {
                StatsError::Recorded(FileError::malformed(
                    &path,
                    format!("line {line}: not hex byte pairs"),
                ))
            })?;
            stats.take(&bytes)?;
        }
    }
    stats.finish()
}

/// The datagrams of a recorded replies file (hex byte pairs, one datagram a line,
/// whitespace allowed, `#` starts a comment, blank lines skipped); a line that is not
/// hex gives its number.
pub(crate) fn datagrams(text: &str) -> impl Iterator<Item = Result<Vec<u8>, usize>> + '_ {
    text.lines().enumerate().filter_map(|(i, line)| {
        let hex: String = line
            .split('#')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        (!hex.is_empty()).then(|| decode_hex(&hex).ok_or(i + 1))
    })
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sense::ctnetlink::encode::{attr, message};

    const MULTI: u16 = 2;

    /// One CPU's message as the kernel builds it: `counters` as (type, value).
    fn cpu(n: u16, counters: &[(u16, u32)]) -> Vec<u8> {
        let mut body = vec![0, 0];
        body.extend(n.to_be_bytes());
        for (ty, v) in counters {
            body.extend(attr(*ty, &v.to_be_bytes()));
        }
        message(ctnetlink_type(IPCTNL_MSG_CT_GET_STATS_CPU), MULTI, &body)
    }

    fn global(entries: u32, max: u32) -> Vec<u8> {
        let mut body = vec![0, 0, 0, 0];
        body.extend(attr(CTA_STATS_GLOBAL_ENTRIES, &entries.to_be_bytes()));
        body.extend(attr(CTA_STATS_GLOBAL_MAX_ENTRIES, &max.to_be_bytes()));
        message(ctnetlink_type(IPCTNL_MSG_CT_GET_STATS), 0, &body)
    }

    fn done() -> Vec<u8> {
        message(NLMSG_DONE, MULTI, &[0; 4])
    }

    /// 6.18's counters (found .. chaintoolong) for one CPU.
    fn k618(found: u32, insert_failed: u32, drop: u32, early: u32) -> Vec<(u16, u32)> {
        vec![
            (2, found),
            (4, 0),
            (8, 0),
            (9, insert_failed),
            (10, drop),
            (11, early),
            (12, 0),
            (13, 0),
            (14, 0),
            (15, 0),
        ]
    }

    #[test]
    fn sums_cpus_under_the_procfs_names() {
        let mut s = CpuStats::default();
        assert!(!s.take(&global(8000, 262144)).unwrap());
        let mut d = cpu(0, &k618(5, 1, 0x10, 3));
        d.extend(cpu(1, &k618(7, 0, 0x22, 4)));
        assert!(!s.take(&d).unwrap());
        assert!(s.take(&done()).unwrap());
        assert_eq!(s.max(), Some(262144));
        let stat = s.finish().unwrap();
        assert_eq!(stat.source, StatSource::Ctnetlink);
        assert_eq!(stat.entries, 8000);
        assert_eq!(stat.drop(), Some(0x32));
        assert_eq!(stat.early_drop(), Some(7));
        assert_eq!(stat.insert_failed(), Some(1));
        assert_eq!(stat.chainlength(), Some(0));
        assert_eq!(stat.get("icmp_error"), Some(0));
        assert_eq!(stat.get("clashres"), Some(0));
        // 6.18 sends no IGNORE: absent, not zero.
        assert_eq!(stat.get("ignore"), None);
    }

    #[test]
    fn an_older_kernel_lacks_the_newer_counters() {
        // 4.18: found, invalid, ignore, insert, insert_failed, drop, early_drop, error,
        // search_restart; no clash_resolve, no chaintoolong.
        let old: Vec<(u16, u32)> = [2, 4, 5, 8, 9, 10, 11, 12, 13]
            .iter()
            .map(|t| (*t, 1))
            .collect();
        let mut d = global(100, 65536);
        d.extend(cpu(0, &old));
        d.extend(cpu(1, &old));
        d.extend(done());
        let mut s = CpuStats::default();
        assert!(s.take(&d).unwrap());
        let stat = s.finish().unwrap();
        assert_eq!(stat.chainlength(), None);
        assert_eq!(stat.get("ignore"), Some(2));
        assert_eq!(stat.drop(), Some(2));
    }

    fn whole(d: &[u8]) -> Result<ConntrackStat, StatsError> {
        let mut s = CpuStats::default();
        s.take(d)?;
        s.finish()
    }

    #[test]
    fn bad_replies_are_named_errors() {
        let mut d = global(1, 2);
        d.extend(cpu(0, &k618(1, 0, 0, 0)));
        d.extend(cpu(0, &k618(1, 0, 0, 0)));
        d.extend(done());
        assert!(matches!(whole(&d), Err(StatsError::RepeatedCpu(0))));

        let mut d = global(1, 2);
        d.extend(cpu(0, &k618(1, 0, 0, 0)));
        d.extend(cpu(1, &k618(1, 0, 0, 0)[..9]));
        d.extend(done());
        let e = whole(&d).unwrap_err();
        assert!(
            matches!(
                e,
                StatsError::Inconsistent {
                    cpu: 1,
                    first: 0,
                    name: "chainlength",
                    present: false
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("cpu 1 lacks chainlength"), "{e}");

        let mut twice = k618(1, 0, 0, 0);
        twice.push((10, 5));
        let mut d = global(1, 2);
        d.extend(cpu(0, &twice));
        d.extend(done());
        assert!(matches!(
            whole(&d),
            Err(StatsError::DuplicateCounter {
                cpu: 0,
                name: "drop"
            })
        ));

        let mut body = vec![0, 0, 0, 3];
        body.extend(attr(10, &[0, 1]));
        let mut d = global(1, 2);
        d.extend(message(
            ctnetlink_type(IPCTNL_MSG_CT_GET_STATS_CPU),
            MULTI,
            &body,
        ));
        assert!(matches!(
            whole(&d),
            Err(StatsError::BadCounter {
                cpu: 3,
                name: "drop",
                len: 2
            })
        ));

        // No count, no CPUs, no end.
        let mut d = cpu(0, &k618(1, 0, 0, 0));
        d.extend(done());
        assert!(matches!(whole(&d), Err(StatsError::Incomplete(_))));
        assert!(matches!(
            whole(&global(1, 2)),
            Err(StatsError::Incomplete(_))
        ));
        let mut d = global(1, 2);
        d.extend(cpu(0, &k618(1, 0, 0, 0)));
        assert!(matches!(whole(&d), Err(StatsError::Incomplete(_))));

        // The kernel's refusals, with what they mean here.
        let e = whole(&message(NLMSG_ERROR, 0, &(-22i32).to_ne_bytes())).unwrap_err();
        assert!(e.to_string().contains("load nf_conntrack_netlink"), "{e}");
        let e = whole(&message(NLMSG_ERROR, 0, &i32::MIN.to_ne_bytes())).unwrap_err();
        assert!(matches!(e, StatsError::Kernel { .. }), "{e}");
        // A conntrack dump's entry is not a statistics reply.
        assert!(matches!(
            whole(&message(0x100, 0, &[2, 0, 0, 0])),
            Err(StatsError::UnexpectedType(0x100))
        ));
    }

    #[test]
    fn a_live_exchange_takes_only_its_own_answers() {
        // The test messages carry sequence 0: another request's, for an exchange
        // numbered 7 and 8.
        let mut s = CpuStats::expecting([7, 8]);
        assert!(matches!(
            s.take(&global(1, 2)),
            Err(StatsError::OtherRequest(0))
        ));
        let mut s = CpuStats::expecting([0, 1]);
        assert!(!s.take(&global(1, 2)).unwrap());
    }

    #[test]
    fn the_kernels_refusals_name_the_request() {
        // NLMSG_ERROR: the code, then the request's header echoed (its type at 4..6).
        let mut body = (-1i32).to_ne_bytes().to_vec();
        body.extend(message(
            ctnetlink_type(IPCTNL_MSG_CT_GET_STATS_CPU),
            0x301,
            &[0; 4],
        ));
        let e = whole(&message(NLMSG_ERROR, 0, &body)).unwrap_err();
        assert!(
            matches!(
                e,
                StatsError::Kernel {
                    request: "IPCTNL_MSG_CT_GET_STATS_CPU",
                    errno: Errno::EPERM
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        // A dump that failed ends with the errno in its DONE.
        let mut d = global(1, 2);
        d.extend(cpu(0, &k618(1, 0, 0, 0)));
        d.extend(message(NLMSG_DONE, MULTI, &(-12i32).to_ne_bytes()));
        assert!(matches!(
            whole(&d),
            Err(StatsError::Kernel {
                errno: Errno::ENOMEM,
                ..
            })
        ));
        // The global statistics twice.
        let mut d = global(1, 2);
        d.extend(global(1, 2));
        assert!(matches!(whole(&d), Err(StatsError::RepeatedGlobal(_))));
    }

    /// Any process with CAP_NET_ADMIN in the namespace can send to ctune's port: its
    /// datagrams are dropped, and the kernel's answer read. Needs root (the forger must
    /// be allowed to send, and the exchange to ask).
    #[test]
    fn datagrams_from_other_sockets_are_not_the_kernels_answer() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (CAP_NET_ADMIN for ctnetlink)");
            return;
        }
        let fd = ctnetlink::open_socket().unwrap();
        setsockopt(&fd, sockopt::ReceiveTimeout, &REPLY_TIMEOUT).unwrap();
        let port = nix::sys::socket::getsockname::<NetlinkAddr>(fd.as_raw_fd())
            .unwrap()
            .pid();
        // A whole forged answer, queued before the exchange asks.
        let mut forged = global(999_999, 1);
        forged.extend(cpu(0, &k618(0, 0, 1_000_000_000, 0)));
        forged.extend(done());
        let forger = ctnetlink::open_socket().unwrap();
        sendto(
            forger.as_raw_fd(),
            &forged,
            &NetlinkAddr::new(port, 0),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut kept = Kept {
            fd,
            buf: vec![0u8; RECV_BUF],
        };
        let stat = exchange(&mut kept).unwrap();
        assert_ne!(stat.entries, 999_999);
        assert!(stat.drop().unwrap() < 1_000_000_000, "{stat:?}");
    }

    #[test]
    fn unknown_counters_are_skipped_and_counted() {
        let mut newer = k618(1, 0, 2, 0);
        newer.push((16, 99));
        let mut d = global(1, 2);
        d.extend(cpu(0, &newer));
        d.extend(cpu(1, &newer));
        d.extend(done());
        let mut s = CpuStats::default();
        s.take(&d).unwrap();
        assert_eq!(s.unknown, 2);
        assert_eq!(s.finish().unwrap().drop(), Some(4));
    }

    #[test]
    fn the_requests_are_two_messages() {
        let r = requests([7, 8]);
        let mut seen = Vec::new();
        ctnetlink::for_each_message::<ParseError>(&r, |m| {
            seen.push((m.ty, m.flags, m.seq, m.body.len()));
            Ok(true)
        })
        .unwrap();
        assert_eq!(
            seen,
            [(0x105, 1, 7, 4), (0x104, 0x301, 8, 4)],
            "GET_STATS, then the GET_STATS_CPU dump"
        );
    }

    #[test]
    fn recorded_replies_take_comments_and_spaces() {
        let dir = tempfile::tempdir().unwrap();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x} ")).collect::<String>();
        let mut cpus = cpu(0, &k618(1, 0, 3, 0));
        cpus.extend(cpu(1, &k618(1, 0, 4, 0)));
        std::fs::write(
            dir.path().join(RECORDED_GLOBAL),
            format!("# count 9, max 64\n{}\n", hex(&global(9, 64))),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(RECORDED_CPU),
            format!("{}  # two CPUs\n\n{}\n", hex(&cpus), hex(&done())),
        )
        .unwrap();
        let stat = recorded(dir.path()).unwrap();
        assert_eq!((stat.entries, stat.drop()), (9, Some(7)));
        std::fs::write(dir.path().join(RECORDED_CPU), "0g\n").unwrap();
        let e = recorded(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("ct_stats_cpu") && e.to_string().contains("line 1"),
            "{e}"
        );
    }
}
