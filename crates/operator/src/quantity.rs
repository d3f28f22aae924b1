//! Kubernetes resource quantities as numbers.
//!
//! A small parser for the quantity grammar (`<signedNumber><suffix>`), used to validate
//! custom-metric targets and to compare resource usage. The maintained crates for this pin
//! older `k8s-openapi` releases than the workspace uses.

/// Parses a quantity string (`"500m"`, `"1.5Gi"`, `"1e3"`, `"1000"`) into its value.
pub fn parse(input: &str) -> Option<f64> {
    let s = input.trim();
    if s.is_empty() {
        return None;
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "+" || number == "-" || number.matches('.').count() > 1 {
        return None;
    }
    if number[1..].contains(['+', '-']) {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            10f64.powi(e)
        }
        _ => return None,
    };
    let v = value * multiplier;
    v.is_finite().then_some(v)
}

/// Formats CPU cores as a millicore quantity, rounded up (`0.2501` → `"251m"`).
pub fn format_cpu(cores: f64) -> String {
    // The small epsilon keeps float noise (0.55000000000000004 cores) from rounding up a step.
    format!("{}m", (cores * 1000.0 - 1e-6).ceil().max(1.0) as i64)
}

/// Formats bytes as a Mi quantity, rounded up (`1.2 MiB` → `"2Mi"`).
pub fn format_memory(bytes: f64) -> String {
    format!(
        "{}Mi",
        (bytes / (1024.0 * 1024.0) - 1e-6).ceil().max(1.0) as i64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_quantity_grammar() {
        let cases: &[(&str, Option<f64>)] = &[
            ("1000", Some(1000.0)),
            ("500m", Some(0.5)),
            ("1.5Gi", Some(1.5 * 1024.0 * 1024.0 * 1024.0)),
            ("256Mi", Some(256.0 * 1024.0 * 1024.0)),
            ("1e3", Some(1000.0)),
            ("2k", Some(2000.0)),
            ("-1", Some(-1.0)),
            (".5", Some(0.5)),
            ("", None),
            ("abc", None),
            ("10 apples", None),
            ("1.2.3", None),
            ("5Xi", None),
            ("1-2", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn formats_round_up() {
        assert_eq!(format_cpu(0.2501), "251m");
        assert_eq!(format_cpu(0.0), "1m");
        assert_eq!(format_cpu(11.0 * 0.05), "550m");
        assert_eq!(format_memory(1.2 * 1024.0 * 1024.0), "2Mi");
    }
}
