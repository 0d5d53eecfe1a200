//! Conntrack sysctl names: the one home of their prefix rules. The kernel's files are
//! `nf_conntrack_*` under `net.netfilter`; the config and the metrics name timeouts
//! without the prefix (`udp_timeout`); sysctl.d files write the dotted path, or the
//! slashed one, with an optional leading `-`. Everything that adds, strips or checks a
//! prefix does it here.

/// The prefix every conntrack key's name starts with.
pub const PREFIX: &str = "nf_conntrack_";

/// The sysctl directory of the conntrack keys, as sysctl.d writes it.
pub const DIR: &str = "net.netfilter.";

/// A conntrack key by its full name (`nf_conntrack_udp_timeout`): checked to be one,
/// so that a name from a file, a config or a netlink reply cannot name a path outside
/// the conntrack keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// `name` as a key: the prefix, then lowercase letters, digits and underscores.
    pub fn new(name: &str) -> Option<Key> {
        let rest = name.strip_prefix(PREFIX)?;
        let ok = !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        ok.then(|| Key(name.to_string()))
    }

    /// A key as a sysctl.d line writes it: `net.netfilter.nf_conntrack_max`, or
    /// `net/netfilter/nf_conntrack_max`, with an optional leading `-` (ignore errors).
    /// Anything else (another directory, a glob) is not a conntrack key.
    pub fn from_sysctl(written: &str) -> Option<Key> {
        let dotted = written.trim().trim_start_matches('-').replace('/', ".");
        Key::new(dotted.strip_prefix(DIR)?)
    }

    /// The full name: the kernel's file name and the key of ctune's maps.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `nf_conntrack_udp_timeout` -> `udp_timeout`; a name without the prefix is returned
/// as it is.
pub fn short(name: &str) -> &str {
    name.strip_prefix(PREFIX).unwrap_or(name)
}

/// `udp_timeout` -> `nf_conntrack_udp_timeout`; a full name is returned as it is.
pub fn full(name: &str) -> String {
    if name.starts_with(PREFIX) {
        name.to_string()
    } else {
        format!("{PREFIX}{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_spellings_of_one_key_meet() {
        let k = Key::new("nf_conntrack_udp_timeout").unwrap();
        assert_eq!(Key::new(&full("udp_timeout")), Some(k.clone()));
        assert_eq!(Key::new(&full("nf_conntrack_udp_timeout")), Some(k.clone()));
        for line in [
            "net.netfilter.nf_conntrack_udp_timeout",
            "net/netfilter/nf_conntrack_udp_timeout",
            " -net.netfilter.nf_conntrack_udp_timeout ",
        ] {
            assert_eq!(Key::from_sysctl(line), Some(k.clone()), "{line}");
        }
        assert_eq!(short(k.name()), "udp_timeout");
        assert_eq!(k.to_string(), "nf_conntrack_udp_timeout");
    }

    #[test]
    fn what_is_not_a_conntrack_key_is_refused() {
        for bad in [
            "",
            "nf_conntrack_",
            "udp_timeout",
            "nf_conntrack_max/../../kernel",
            "nf_conntrack_Max",
            "nf_conntrack_max ",
            "nf_conntrack_*",
        ] {
            assert_eq!(Key::new(bad), None, "{bad:?}");
        }
        for bad in [
            "kernel.pid_max",
            "net.ipv4.nf_conntrack_max",
            "net.netfilter.nf_log.2",
            "net.netfilter.nf_conntrack_*",
            "nf_conntrack_max",
        ] {
            assert_eq!(Key::from_sysctl(bad), None, "{bad:?}");
        }
        assert_eq!(Key::new(&full("../max")), None);
    }
}
