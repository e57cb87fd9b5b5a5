//! Sizes with upstream's suffixes: a number followed by one of k, m, g, t, p, e (powers of two,
//! any case), e.g. `4k` = 4096, `1G` = 2^30. Also the reverse, for messages (`unparse`).

use crate::bad_value::BadValue;

/// Suffix letters and their shifts, smallest first.
const SUFFIXES: &[(char, u32)] = &[('k', 10), ('m', 20), ('g', 30), ('t', 40), ('p', 50), ('e', 60)];

/// Parses a size; `what` names the value in the error message.
pub fn parse_size(s: &str, what: &str) -> Result<u64, BadValue> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let invalid = || BadValue::Invalid { what: what.into(), value: s.into() };
    let too_big = || BadValue::TooBig { what: what.into(), value: s.into() };
    if digits.is_empty() {
        return Err(invalid());
    }
    let n: u64 = digits.parse().map_err(|_| too_big())?;
    let shift = match suffix {
        "" => 0,
        _ => {
            let mut chars = suffix.chars();
            let (Some(c), None) = (chars.next(), chars.next()) else { return Err(invalid()) };
            SUFFIXES.iter().find(|(l, _)| l.eq_ignore_ascii_case(&c)).map(|&(_, b)| b).ok_or_else(invalid)?
        }
    };
    n.checked_mul(1u64 << shift).ok_or_else(too_big)
}

/// Formats a size with the largest suffix that divides it exactly (`65536` → `64k`).
pub fn unparse_size(v: u64) -> String {
    if v == 0 {
        return "0".into();
    }
    for &(c, shift) in SUFFIXES.iter().rev() {
        let unit = 1u64 << shift;
        if v.is_multiple_of(unit) {
            return format!("{}{}", v / unit, c);
        }
    }
    v.to_string()
}

/// Parses a plain non-negative integer; `what` names the flag in the error.
pub fn parse_num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, BadValue> {
    s.trim().parse().map_err(|_| BadValue::Invalid { what: what.into(), value: s.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096", "x"), Ok(4096));
        assert_eq!(parse_size("4k", "x"), Ok(4096));
        assert_eq!(parse_size("4K", "x"), Ok(4096));
        assert_eq!(parse_size("1m", "x"), Ok(1 << 20));
        assert_eq!(parse_size("3G", "x"), Ok(3 << 30));
        assert_eq!(parse_size("2t", "x"), Ok(2 << 40));
        assert_eq!(parse_size("1e", "x"), Ok(1 << 60));
        assert_eq!(parse_size("0", "x"), Ok(0));
        assert_eq!(parse_size("16e", "block size").unwrap_err().to_string(), "block size \"16e\" is too big");
        for bad in ["", "k", "4kb", "4x", "-1", "1.5m", "4 k", "99999999999999999999999"] {
            assert!(parse_size(bad, "size").is_err(), "{bad}");
        }
        assert_eq!(parse_size("4q", "block size").unwrap_err().to_string(), "invalid block size \"4q\"");
    }

    #[test]
    fn unparse() {
        assert_eq!(unparse_size(65536), "64k");
        assert_eq!(unparse_size(1 << 30), "1g");
        assert_eq!(unparse_size(1000), "1000");
        assert_eq!(unparse_size(0), "0");
    }
}
