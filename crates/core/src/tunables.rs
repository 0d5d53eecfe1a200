//! The conntrack keys ctune knows, as data: name, scope, and the role each plays.
//!
//! Which keys are global and which per namespace is the fact most tools get wrong: the
//! size of the table (`nf_conntrack_max`, `nf_conntrack_buckets`, `expect_max`) is global
//! and writable only from the initial namespace, while the count and every timeout belong
//! to each network namespace, and a new namespace starts from built-in defaults.

use serde::Serialize;

/// Global table limit; the table-full check compares each namespace's count with it.
pub const MAX: &str = "nf_conntrack_max";
/// Global hash size (same resize as the `hashsize` module parameter).
pub const BUCKETS: &str = "nf_conntrack_buckets";
/// Per-namespace entry count (read-only).
pub const COUNT: &str = "nf_conntrack_count";
/// Global limit of expectations (helpers such as FTP); observed, not tuned.
pub const EXPECT_MAX: &str = "nf_conntrack_expect_max";
/// The established-TCP timeout, lowered last and never below a keepalive-safe floor.
pub const ESTABLISHED: &str = "nf_conntrack_tcp_timeout_established";

/// The kernel's upper bound for `nf_conntrack_max` (the sysctl range is 0..INT_MAX).
pub const KERNEL_MAX_LIMIT: u64 = i32::MAX as u64;
/// The page size assumed when the kernel's cannot be read (x86, most arm64).
pub const DEFAULT_PAGE_SIZE: u64 = 4096;
/// Bytes per hash bucket (`struct hlist_nulls_head`).
pub const BUCKET_BYTES: u64 = 8;
/// Hash chains longer than this make the kernel refuse the insert (`chainlength`).
pub const MAX_CHAIN_LENGTH: u64 = 64;

/// The share of the table's entries whose namespaces a memory signal (the host short of
/// memory, the table over its budget, a memory stall) lowers timeouts in: the fewest
/// biggest holders that together hold this much, and any that hold as much as the
/// smallest of them. Cutting there frees the memory; the namespaces that hold the rest
/// (a router's or a quiet tenant's few percent) keep their sessions' timeouts.
pub const MEMORY_HOLDERS_SHARE: f64 = 0.9;

/// What the holders' entries must cost, as a share of what the table is short by (its
/// memory over its budget; for a host short of memory, what MemAvailable lacks of the
/// reserve), for a memory signal to lower their timeouts: below it the table is not what
/// is short, and cutting would break sessions to free next to nothing.
pub const MEMORY_RELIEF_SHARE: f64 = 0.1;

/// Where a key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One value for the whole machine, writable only from the initial namespace.
    Global,
    /// One value per network namespace.
    Namespace,
}

/// Scope of a conntrack sysctl by name.
pub fn scope_of(key: &str) -> Scope {
    match key {
        MAX | BUCKETS | EXPECT_MAX => Scope::Global,
        _ => Scope::Namespace,
    }
}

/// The order in which pressure lowers timeouts. Entries in early tiers are either not
/// confirmed by the peer (unreplied, half-open) or already ending, so cutting them loses
/// nothing a user notices; established flows are cut last because a too-short timeout
/// silently breaks idle SSH and database sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutTier {
    /// Generic, unreplied, half-open, closing and datagram states: lowered at `elevated`.
    Transient,
    /// Keys that govern established flows (idle established TCP and SCTP, and TCP
    /// established with unacknowledged data, retransmissions or a zero window): lowered
    /// only at `critical`.
    Established,
}

/// Whether a sysctl name is a conntrack timeout key (the list differs per kernel, so
/// timeouts are discovered by name rather than hard-coded). A conntrack key's name
/// first ([`crate::sysctl::Key`]): a name from a tampered state file with a `/` in it
/// must not pass for one and reach a path.
pub fn is_timeout_key(key: &str) -> bool {
    crate::sysctl::Key::new(key).is_some() && key.contains("timeout") && !key.contains("frag6")
}

/// The timeouts the kernel applies to established TCP flows that are stalled rather than
/// idle (unacknowledged data, retransmissions, a zero window).
pub const STALLED_ESTABLISHED: [&str; 2] = [
    "nf_conntrack_tcp_timeout_unacknowledged",
    "nf_conntrack_tcp_timeout_max_retrans",
];

/// TCP's largest retransmission interval (TCP_RTO_MAX, 120 s): a stalled session's entry
/// must outlive the gap between two retransmissions.
pub const TCP_RTO_MAX_SECS: u64 = 120;

/// The tier a timeout key belongs to.
pub fn tier_of(key: &str) -> TimeoutTier {
    // Live sessions, cut last: TCP's and SCTP's established state, and the two timeouts
    // the kernel applies to ESTABLISHED TCP flows whose data is unacknowledged or
    // retransmitted, or whose window is zero (`tcp_timeout_unacknowledged`,
    // `tcp_timeout_max_retrans` in nf_conntrack_proto_tcp.c): a session stalled longer
    // than that loses its entry.
    if key == ESTABLISHED || key.ends_with("_established") || STALLED_ESTABLISHED.contains(&key) {
        TimeoutTier::Established
    } else {
        TimeoutTier::Transient
    }
}

/// The kernel allocates the hash table in whole pages of 8-byte heads
/// (`nf_ct_alloc_hashtable` rounds the size up to PAGE_SIZE / 8 buckets): 512 with 4 KiB
/// pages, 8192 with the 64 KiB pages of some arm64 and ppc64le kernels.
pub fn bucket_align(page_size: u64) -> u64 {
    (page_size / BUCKET_BYTES).max(1)
}

/// The kernel's upper bound for buckets: the table is at most INT_MAX/8 bytes of heads,
/// in whole pages.
pub fn buckets_limit(page_size: u64) -> u64 {
    let align = bucket_align(page_size);
    (KERNEL_MAX_LIMIT / BUCKET_BYTES) / align * align
}

/// Rounds a bucket count the way the kernel does, for its page size.
pub fn round_buckets(buckets: u64, page_size: u64) -> u64 {
    let align = bucket_align(page_size);
    buckets
        .div_ceil(align)
        .saturating_mul(align)
        .clamp(align, buckets_limit(page_size))
}

/// The hash size for a max: max / ratio buckets, rounded as the kernel rounds. Each
/// entry is hashed twice, so a full table averages 2 x ratio entries per chain.
pub fn buckets_for(max: u64, ratio: u32, page_size: u64) -> u64 {
    round_buckets(max.div_ceil(u64::from(ratio.max(1))), page_size)
}

/// Kernel 6.x default timeouts in seconds, as a fresh namespace has them (checked on the
/// 6.18 fixture): the simulator's start, and the tests' kernel.
pub const KERNEL_DEFAULT_TIMEOUTS: &[(&str, u64)] = &[
    ("nf_conntrack_generic_timeout", 600),
    ("nf_conntrack_gre_timeout", 30),
    ("nf_conntrack_gre_timeout_stream", 180),
    ("nf_conntrack_icmp_timeout", 30),
    ("nf_conntrack_icmpv6_timeout", 30),
    ("nf_conntrack_sctp_timeout_closed", 10),
    ("nf_conntrack_sctp_timeout_cookie_echoed", 3),
    ("nf_conntrack_sctp_timeout_cookie_wait", 3),
    ("nf_conntrack_sctp_timeout_established", 210),
    ("nf_conntrack_sctp_timeout_heartbeat_sent", 30),
    ("nf_conntrack_sctp_timeout_shutdown_ack_sent", 3),
    ("nf_conntrack_sctp_timeout_shutdown_recd", 3),
    ("nf_conntrack_sctp_timeout_shutdown_sent", 3),
    ("nf_conntrack_tcp_timeout_close", 10),
    ("nf_conntrack_tcp_timeout_close_wait", 60),
    ("nf_conntrack_tcp_timeout_established", 432000),
    ("nf_conntrack_tcp_timeout_fin_wait", 120),
    ("nf_conntrack_tcp_timeout_last_ack", 30),
    ("nf_conntrack_tcp_timeout_max_retrans", 300),
    ("nf_conntrack_tcp_timeout_syn_recv", 60),
    ("nf_conntrack_tcp_timeout_syn_sent", 120),
    ("nf_conntrack_tcp_timeout_time_wait", 120),
    ("nf_conntrack_tcp_timeout_unacknowledged", 300),
    ("nf_conntrack_udp_timeout", 30),
    ("nf_conntrack_udp_timeout_stream", 120),
];

/// Timeout keys of older kernels that 6.x no longer has (DCCP, UDP-Lite, SCTP's
/// HEARTBEAT_ACKED): a floor for one is valid, and a note on a kernel without it.
pub const OLDER_TIMEOUT_KEYS: &[&str] = &[
    "nf_conntrack_dccp_timeout_request",
    "nf_conntrack_dccp_timeout_respond",
    "nf_conntrack_dccp_timeout_partopen",
    "nf_conntrack_dccp_timeout_open",
    "nf_conntrack_dccp_timeout_closereq",
    "nf_conntrack_dccp_timeout_closing",
    "nf_conntrack_dccp_timeout_timewait",
    "nf_conntrack_udplite_timeout",
    "nf_conntrack_udplite_timeout_stream",
    "nf_conntrack_sctp_timeout_heartbeat_acked",
];

/// Every timeout key of every kernel ctune knows (4.19 to 6.18).
pub fn known_timeout_keys() -> impl Iterator<Item = &'static str> {
    KERNEL_DEFAULT_TIMEOUTS
        .iter()
        .map(|(k, _)| *k)
        .chain(OLDER_TIMEOUT_KEYS.iter().copied())
}

/// Edit distance between two names (for "did you mean").
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != *cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The known timeout key closest to `short` (both without the `nf_conntrack_` prefix),
/// when it is close enough to be a misspelling.
pub fn nearest_timeout_key(short: &str) -> Option<&'static str> {
    known_timeout_keys()
        .filter_map(|k| k.strip_prefix(crate::sysctl::PREFIX))
        .map(|k| (distance(short, k), k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert_eq!(scope_of(MAX), Scope::Global);
        assert_eq!(scope_of(BUCKETS), Scope::Global);
        assert_eq!(scope_of("nf_conntrack_generic_timeout"), Scope::Namespace);
        assert_eq!(scope_of(COUNT), Scope::Namespace);
    }

    #[test]
    fn timeout_keys_by_name() {
        assert!(is_timeout_key("nf_conntrack_udp_timeout_stream"));
        assert!(is_timeout_key(ESTABLISHED));
        assert!(!is_timeout_key("nf_conntrack_frag6_timeout"));
        assert!(!is_timeout_key("nf_conntrack_tcp_max_retrans"));
        assert_eq!(tier_of(ESTABLISHED), TimeoutTier::Established);
        assert_eq!(
            tier_of("nf_conntrack_generic_timeout"),
            TimeoutTier::Transient
        );
    }

    #[test]
    fn bucket_rounding() {
        let page = DEFAULT_PAGE_SIZE;
        assert_eq!(round_buckets(1, page), 512);
        assert_eq!(round_buckets(512, page), 512);
        assert_eq!(round_buckets(513, page), 1024);
        assert_eq!(round_buckets(65536, page), 65536);
        assert_eq!(round_buckets(u64::MAX, page), buckets_limit(page));
        assert!(buckets_limit(page) <= i32::MAX as u64 / 8);
        // 64 KiB pages (arm64, ppc64le): whole 8192-bucket pages.
        assert_eq!(round_buckets(1, 65536), 8192);
        assert_eq!(round_buckets(16_384 + 1, 65536), 24_576);
        assert_eq!(buckets_limit(65536) % 8192, 0);
    }

    #[test]
    fn misspelt_timeout_names_have_a_nearest_known_one() {
        assert_eq!(
            nearest_timeout_key("tcp_timeout_establishd"),
            Some("tcp_timeout_established")
        );
        assert_eq!(nearest_timeout_key("udp_timeout"), Some("udp_timeout"));
        assert_eq!(nearest_timeout_key("flux_capacitor"), None);
        assert!(known_timeout_keys().any(|k| k == "nf_conntrack_dccp_timeout_open"));
    }
}
