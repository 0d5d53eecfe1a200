//! Memory totals from `/proc/meminfo`, the base of the memory budget.

use serde::Serialize;

/// The two figures the ceiling needs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemInfo {
    /// Physical memory the kernel manages.
    pub total_bytes: u64,
    /// Memory available for new allocations without swapping (page cache it can
    /// reclaim included): what the host can spare, the base of the budget's `spare`.
    pub available_bytes: Option<u64>,
}

/// Parses `/proc/meminfo` text; `MemTotal` is required, `MemAvailable` optional
/// (kernels before 3.14 lack it).
pub fn parse(text: &str) -> Result<MemInfo, String> {
    let mut total = None;
    let mut available = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key.trim() {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            _ => continue,
        };
        let mut parts = rest.split_whitespace();
        let n: u64 = parts
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{key}: expected a number, found {:?}", rest.trim()))?;
        let bytes = match parts.next() {
            Some("kB") => n.saturating_mul(1024),
            None => n,
            Some(unit) => return Err(format!("{key}: unknown unit {unit:?}")),
        };
        *slot = Some(bytes);
    }
    let total_bytes = total.ok_or("no MemTotal line")?;
    if total_bytes == 0 {
        return Err("MemTotal is 0".into());
    }
    Ok(MemInfo {
        total_bytes,
        available_bytes: available,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kib_lines() {
        let m = parse("MemTotal:       24731708 kB\nMemFree: 1 kB\nMemAvailable:   24438988 kB\n")
            .unwrap();
        assert_eq!(m.total_bytes, 24731708 * 1024);
        assert_eq!(m.available_bytes, Some(24438988 * 1024));
    }

    #[test]
    fn old_kernel_without_available() {
        let m = parse("MemTotal: 1024 kB\n").unwrap();
        assert_eq!(m.available_bytes, None);
    }

    #[test]
    fn rejects_missing_or_bad_total() {
        assert!(parse("MemFree: 1 kB\n").is_err());
        assert!(
            parse("MemTotal: lots kB\n")
                .unwrap_err()
                .contains("MemTotal")
        );
        assert!(parse("MemTotal: 0 kB\n").is_err());
    }
}
