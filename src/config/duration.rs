//! Durations as the configuration writes them: `90s`, `15m`, `6h`, `30d`,
//! and combinations from the largest unit down such as `1h30m`.

use std::time::Duration;

const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// Parse a duration such as `90s`, `15m`, `6h`, `30d` or `1h30m`.
///
/// The error names the input and what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {s:?}: write a whole number and a unit (s, m, h or d), \
             like 90s, 15m, 6h, 30d or 1h30m"
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    // Index into UNITS of the last unit seen: units go from largest to smallest.
    let mut last: Option<usize> = None;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let rank = UNITS.iter().position(|(u, _)| *u == c).ok_or_else(bad)?;
        if digits.is_empty() || last.is_some_and(|l| rank <= l) {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(UNITS[rank].1)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
        last = Some(rank);
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(15 * 60)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn combinations_from_largest_unit_down() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("1d2h3m4s"),
            Ok(Duration::from_secs(86_400 + 7200 + 180 + 4))
        );
    }

    #[test]
    fn rejected_with_what_is_accepted() {
        let expected = |s: &str| {
            format!(
                "invalid duration {s:?}: write a whole number and a unit (s, m, h or d), \
                 like 90s, 15m, 6h, 30d or 1h30m"
            )
        };
        for s in [
            "",
            "90",
            "s",
            "6 h",
            "6hours",
            "1.5h",
            "-5m",
            "30m1h",
            "1h1h",
            "5w",
            " 5m",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_duration(s), Err(expected(s)), "input {s:?}");
        }
    }
}
