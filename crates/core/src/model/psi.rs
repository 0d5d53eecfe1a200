//! Memory pressure from `/proc/pressure/memory` (PSI, kernels 4.20+ with
//! CONFIG_PSI): `some avg10=0.12 avg60=... avg300=... total=...`, the share of the last
//! 10 s in which some task waited for memory. Reclaim and swapping show here before the
//! OOM killer does: the hard safety valve of the memory budget.

/// The `some avg10` percentage of the text.
pub fn some_avg10(text: &str) -> Result<f64, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("some "))
        .ok_or("no `some` line")?;
    let value = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))
        .ok_or("no avg10 field on the `some` line")?;
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (0.0..=100.0).contains(v))
        .ok_or_else(|| format!("avg10={value} is not a percentage"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_some_avg10() {
        let text = "some avg10=12.50 avg60=3.00 avg300=0.40 total=123456\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=1\n";
        assert_eq!(some_avg10(text), Ok(12.5));
    }

    #[test]
    fn refuses_garbage() {
        assert!(some_avg10("").is_err());
        assert!(some_avg10("full avg10=1.00\n").is_err());
        assert!(some_avg10("some avg60=1.00\n").is_err());
        assert!(some_avg10("some avg10=abc\n").is_err());
        assert!(some_avg10("some avg10=250\n").is_err());
    }
}
