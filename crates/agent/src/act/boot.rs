//! The boot step (`ctune boot`): before traffic arrives, put the persisted limits in
//! force and check they stuck.
//!
//! systemd-sysctl (or OpenWrt's /etc/init.d/sysctl) applies 99-ctune.conf too, but only
//! if the keys exist when it runs (a modular conntrack may load later), and a resize is
//! cheapest now, while the table is empty. So the boot step applies the file's max
//! first, then the hash size, each only when the live value is lower (a higher one is
//! someone else's), each read back. Every `persist.layout` keeps the values in that same
//! sysctl.d file.

use crate::act::apply::{self, ApplyError};
use crate::act::persist;
use crate::act::state;
use crate::sense::kfile::{self, Cause};
use crate::sense::observe::{self, ObserveError};
use crate::sense::roots::Roots;
use ctune_core::bounds::{self, Bounds};
use ctune_core::config::{Config, NamespaceMode, Namespaces, Role, RoleSetting};
use ctune_core::policy;
use ctune_core::tunables;

/// One persisted key and what the boot step did with it.
#[derive(Debug)]
pub struct BootItem {
    /// The sysctl.
    pub key: String,
    /// Live value before.
    pub live: u64,
    /// Persisted value.
    pub persisted: u64,
    /// None: already in force (or higher: boot only raises); Some(Ok): written;
    /// Some(Err): failed.
    pub result: Option<Result<(), ApplyError>>,
}

/// The role whose ceiling bounds what boot writes: the config's, or under `role: auto`
/// the larger of the one the agent held (in its state) and the one the facts show now
/// (early in a boot a runtime's socket may not be there yet): the persisted max was
/// bounded by the held role's ceiling when it was written.
fn boot_role(roots: &Roots, cfg: &Config, obs: &ctune_core::model::Observation) -> Role {
    if let RoleSetting::Fixed(r) = cfg.role {
        return r;
    }
    let held = state::load(roots).ok().and_then(|s| s.role).map(|h| h.role);
    let shown = obs
        .host
        .facts
        .as_ref()
        .map(|f| ctune_core::role::detect(f).role);
    held.into_iter()
        .chain(shown)
        .max_by_key(|r| r.budget_rank())
        .unwrap_or_default()
}

/// Applies the persisted values. `Ok(None)`: nothing is persisted. A value outside the
/// bounds of anything ctune would set (a hand-edited file) is refused and named.
pub fn boot(roots: &Roots, cfg: &Config) -> Result<Option<Vec<BootItem>>, ObserveError> {
    let sysctl = persist::Files::of(cfg.persist.layout).sysctl;
    let file = roots.etc.join(sysctl);
    let text = match kfile::read_text(&file) {
        Ok(t) => t,
        Err(e) if e.cause == Cause::Missing => return Ok(None),
        Err(e) => return Err(ObserveError::Unreadable(e)),
    };
    let own = Namespaces {
        mode: NamespaceMode::Initial,
        names: Vec::new(),
    };
    let obs = observe::observe(roots, &own)?;
    let cfg = &cfg.for_role(boot_role(roots, cfg, &obs));
    let limits = Bounds {
        min_max: cfg.ceiling.min_max,
        ceiling: Some(policy::ceiling_of(&obs, cfg).value),
        table_needs: None,
        page_size: obs.host.page_size,
    };
    let values = persist::parse_sysctl_values(&text);
    let mut items = Vec::new();
    // Max before buckets: a bigger table never comes before the limit that needs it.
    for key in [tunables::MAX, tunables::BUCKETS] {
        let Some(&(_, persisted)) = values.iter().find(|(k, _)| k == key) else {
            continue;
        };
        let path = roots.sysctl(key);
        let live = kfile::read_u64(&path).map_err(|e| match e.cause {
            Cause::Missing => ObserveError::NotLoaded(e),
            _ => ObserveError::Unreadable(e),
        })?;
        // Raise-only: a higher live value was set by someone after systemd-sysctl (or by
        // a later sysctl.d file) and is theirs; 0 (unlimited) is never written. One
        // exception: when the module is loaded with `hashsize=`, the kernel sets max to
        // 8 x hashsize itself. That is nobody's choice, and may exceed ctune's ceiling.
        let kernel_default = key == tunables::MAX
            && kfile::read_u64(&roots.sysctl(tunables::BUCKETS))
                .is_ok_and(|b| live == b.saturating_mul(8));
        let wanted = persisted != 0 && (live < persisted || (kernel_default && live != persisted));
        let result = wanted.then(|| match bounds::check(key, persisted, &limits) {
            Ok(()) => apply::write_value(&path, key, persisted),
            Err(reason) => Err(ApplyError::Skipped {
                key: key.to_string(),
                value: persisted,
                reason: format!("{reason} (from {})", file.display()),
            }),
        });
        items.push(BootItem {
            key: key.to_string(),
            live,
            persisted,
            result,
        });
    }
    Ok(Some(items))
}
