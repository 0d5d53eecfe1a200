//! Human units: byte sizes ("512MiB"), durations ("90s", "5d") and their display.

use std::time::Duration;

/// Parses a byte size: a plain number of bytes or a number with a binary suffix
/// (KiB, MiB, GiB, TiB). Decimal suffixes are refused rather than guessed at.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{t:?} is not a size (examples: 536870912, 512MiB, 4GiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {t:?}: use B, KiB, MiB, GiB or TiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{t:?} is too large"))
}

/// Formats bytes with a binary unit, one decimal.
pub fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Formats a count the one way ctune prints counts: exact, so a value in a reason
/// matches the value in the sysctl, the file and `--json` (16777216, not "17M").
pub fn fmt_count(n: u64) -> String {
    n.to_string()
}

/// Formats a duration of whole seconds the way the config accepts it ("2h", "15h", "5d").
pub fn fmt_secs(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Formats a ratio as a percentage with no decimals below 10% precision needs.
pub fn fmt_pct(ratio: f64) -> String {
    let pct = ratio * 100.0;
    if pct > 0.0 && pct < 10.0 && (pct - pct.round()).abs() > 0.05 {
        format!("{pct:.1}%")
    } else {
        format!("{pct:.0}%")
    }
}

/// Text from outside (process and file names, other users' choices) made safe to print:
/// control characters (ESC, newlines, ...) are written as escapes, so a name can neither
/// rewrite the operator's terminal nor forge lines of ctune's output.
pub fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("nginx"), "nginx");
        assert_eq!(printable("a\x1b[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
        assert_eq!(printable("zoë"), "zoë");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4 GiB"), Ok(4 << 30));
        assert!(parse_size("4GB").unwrap_err().contains("GiB"));
        assert!(parse_size("lots").is_err());
        assert!(
            parse_size("99999999999999TiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn display() {
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(3 << 30), "3.0 GiB");
        assert_eq!(fmt_count(16_777_216), "16777216");
        assert_eq!(fmt_count(524_288), "524288");
        assert_eq!(fmt_secs(54000), "15h");
        assert_eq!(fmt_pct(0.91), "91%");
        assert_eq!(fmt_pct(0.012), "1.2%");
        assert_eq!(fmt_pct(0.05), "5%");
    }
}
