//! The output of a decision: what would change, in which order, and why.

use serde::Serialize;

use crate::ceiling::Ceiling;
use crate::model::NetnsId;
use crate::pressure::Level;

/// Where a change applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum Target {
    /// A machine-wide key, written from the initial namespace.
    Global,
    /// A per-namespace key, written from inside that namespace.
    Namespace {
        /// The namespace; in JSON its `name` and `inode` sit beside `scope`.
        #[serde(flatten)]
        netns: NetnsId,
    },
}

/// One key changing from `old` to `new`, with the reason in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The sysctl name (`nf_conntrack_max`, `nf_conntrack_generic_timeout`, ...).
    pub key: String,
    /// Global or the namespace it belongs to.
    pub target: Target,
    /// The value now.
    pub old: u64,
    /// The value ctune would set.
    pub new: u64,
    /// Why, readable by an operator who has not read the code.
    pub reason: String,
}

/// The per-namespace part of a decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamespaceVerdict {
    /// Which namespace; in JSON its `name` and `inode` are this object's own fields.
    #[serde(flatten)]
    pub netns: NetnsId,
    /// Entries now.
    pub count: Option<u64>,
    /// count / max now.
    pub utilisation: Option<f64>,
    /// count / max after the planned max change.
    pub utilisation_after: Option<f64>,
    /// Packets lost to a full table since the previous sample: the `drop` rise less
    /// the clashes (None on a first sample, or when the previous one is too old).
    pub drop_delta: Option<u64>,
    /// Packets lost to unresolved insert clashes since the previous sample (`drop` and
    /// `insert_failed` rising together, at any utilisation): never a reason to grow max
    /// or lower timeouts.
    pub clash_delta: Option<u64>,
    /// `early_drop` increase since the previous sample.
    pub early_drop_delta: Option<u64>,
    /// `chainlength` increase since the previous sample (inserts refused by long chains).
    pub chainlength_delta: Option<u64>,
    /// The level now: the live count against the live max and the loss since the
    /// previous sample, without hysteresis (None when the count is unreadable). A
    /// namespace dropping now is never normal here, even when the plan's growth
    /// answers it.
    pub level_now: Option<Level>,
    /// Why the level now is what it is.
    pub level_now_reason: Option<String>,
    /// The pressure level after this decision: under the planned max, with the hold
    /// that keeps levels from flapping.
    pub level: Level,
    /// Why the level after is what it is.
    pub level_reason: String,
}

/// Everything one decision produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The hardware ceiling and how it was derived.
    pub ceiling: Ceiling,
    /// Changes in the order they must be applied: max before a bigger hash, then
    /// timeouts per namespace.
    pub changes: Vec<Change>,
    /// Levels and signals per namespace.
    pub namespaces: Vec<NamespaceVerdict>,
    /// Why things that might be expected to change do not (held, deferred, capped), and
    /// what the decision noticed.
    pub explanations: Vec<Explanation>,
    /// The role whose budget the decision took, and why (set by the controller; None
    /// for a decision taken outside a step).
    pub role: Option<crate::role::InForce>,
}

/// One explanation: what kind it is, for the code that acts on it (the agent logs an
/// adoption where it logs changes; a missing floor is noted for one namespace only),
/// and the sentence an operator reads. In JSON, the sentence alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// What it is about.
    pub kind: Why,
    /// What it says.
    pub text: String,
}

/// What an [`Explanation`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Someone else (an admin, kube-proxy, tuned) wrote over a value ctune set since the
    /// previous decision: an event, explained once ([`ADOPTED`] is in its text).
    Adopted,
    /// Why max does not grow (held, capped by the ceiling, short of memory, someone
    /// else's, not writable here).
    Max,
    /// Why the hash does not follow max (held, deferred, someone else's, unknown).
    Hash,
    /// Why timeouts are lowered or spared as they are.
    Timeouts,
    /// A floor in the config for a key this kernel lacks.
    FloorKeyMissing,
    /// Packets dropped by insert clashes: not a full table.
    Clash,
    /// Inserts refused for hash chains too long.
    ChainTooLong,
    /// The first sample: no counter rise yet.
    FirstSample,
    /// The previous sample is too old to measure a rise against.
    StaleBaseline,
}

impl Explanation {
    /// An explanation of `kind` saying `text`.
    pub fn new(kind: Why, text: impl Into<String>) -> Explanation {
        Explanation {
            kind,
            text: text.into(),
        }
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Explanation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// The words every explanation of an adoption carries: a value ctune set (a global key,
/// or a timeout it lowered) was changed by someone else since, and ctune takes it as the
/// operator's (or, with `agent.respect_operator: false`, plans over it). An adoption is
/// an event, not a lasting condition: it is explained once, in the decision that sees
/// it, and the agent logs it where changes are logged ([`Plan::adoptions`]).
pub const ADOPTED: &str = "someone else changed it";

impl Plan {
    /// The namespaces this plan leaves above `level`.
    pub fn above(&self, level: Level) -> std::collections::BTreeSet<u64> {
        self.namespaces
            .iter()
            .filter(|v| v.level > level)
            .map(|v| v.netns.inode)
            .collect()
    }

    /// The planned change of a global key, if any.
    pub fn global_change(&self, key: &str) -> Option<&Change> {
        self.changes
            .iter()
            .find(|c| c.key == key && c.target == Target::Global)
    }

    /// The explanations that record an adoption ([`Why::Adopted`]): values someone
    /// else (an admin, kube-proxy, tuned) wrote over ctune's since the previous decision.
    pub fn adoptions(&self) -> impl Iterator<Item = &str> {
        self.explanations
            .iter()
            .filter(|e| e.kind == Why::Adopted)
            .map(|e| e.text.as_str())
    }
}
