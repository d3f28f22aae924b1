//! Queue-load traces: piecewise-constant arrival rates, built in or read from CSV.

use std::path::Path;

use anyhow::{Context, bail};

/// Names of the built-in traces, in the order `--all` runs them.
pub const BUILT_IN: [&str; 3] = ["step", "spike", "daily-sine"];

/// A piecewise-constant arrival rate: `rate(t)` is the rate of the last segment that starts at
/// or before `t` (0 before the first one); the trace is `length` seconds long and its last rate
/// holds after that.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Short name for reports (the built-in name or the file's stem).
    pub name: String,
    /// `(start second, tasks per second)`, starts strictly increasing, rates finite and >= 0.
    segments: Vec<(f64, f64)>,
    /// Length in seconds.
    length: f64,
    /// `(start second, tasks per second)`: a downstream limit on the completions of all workers
    /// together (none before the first segment; `f64::INFINITY`: none).
    downstream: Vec<(f64, f64)>,
}

impl Trace {
    /// A trace from `(start second, tasks per second)` segments, checked: starts >= 0 and
    /// strictly increasing, rates finite and not negative, `length` > 0.
    pub fn new(name: &str, segments: Vec<(f64, f64)>, length: f64) -> anyhow::Result<Self> {
        let mut previous: Option<f64> = None;
        for &(start, rate) in &segments {
            if !start.is_finite() || start < 0.0 {
                bail!("trace {name}: segment start {start} is not a finite number >= 0");
            }
            if previous.is_some_and(|p| start <= p) {
                bail!("trace {name}: segment starts must increase, {start} follows {previous:?}");
            }
            check_rate(rate).with_context(|| format!("trace {name} at {start} s"))?;
            previous = Some(start);
        }
        if !length.is_finite() || length <= 0.0 {
            bail!("trace {name}: length {length} s is not a positive number");
        }
        Ok(Self {
            name: name.to_owned(),
            segments,
            length,
            downstream: Vec::new(),
        })
    }

    /// The trace's length in seconds.
    pub fn length(&self) -> f64 {
        self.length
    }

    /// The segments, `(start second, tasks per second)`.
    pub fn segments(&self) -> &[(f64, f64)] {
        &self.segments
    }

    /// Arrival rate (tasks per second) at second `t`.
    pub fn rate_at(&self, t: f64) -> f64 {
        let i = self.segments.partition_point(|&(start, _)| start <= t);
        if i == 0 { 0.0 } else { self.segments[i - 1].1 }
    }

    /// The downstream limit (tasks per second, all workers together) at second `t`.
    pub fn downstream_at(&self, t: f64) -> f64 {
        let i = self.downstream.partition_point(|&(start, _)| start <= t);
        if i == 0 {
            f64::INFINITY
        } else {
            self.downstream[i - 1].1
        }
    }

    /// The same trace with a downstream limit: `(start second, tasks per second)` segments.
    pub fn with_downstream(mut self, downstream: Vec<(f64, f64)>) -> Self {
        self.downstream = downstream;
        self
    }

    /// The highest rate of the trace.
    pub fn peak(&self) -> f64 {
        self.segments.iter().map(|&(_, r)| r).fold(0.0, f64::max)
    }

    /// A built-in trace by name (`sine` is accepted for `daily-sine`).
    ///
    /// - `step`: 5/s for 10 min, 50/s for 20 min, 5/s for 10 min (40 min).
    /// - `spike`: 5/s for 10 min, 100/s for 2 min, 5/s for 18 min (30 min).
    /// - `daily-sine`: a day compressed into 2 h, `21 − 19·cos(2πt/7200)` tasks/s (2/s at the
    ///   start and end, 40/s after one hour), held constant over 30-second segments.
    /// - `capped-downstream` (not part of `--all`): the step's load, 5/s, 40/s from 10 to 30 min,
    ///   5/s to 40 min, while a downstream service completes at most 20 tasks/s in all (whatever
    ///   the number of workers) from the start until minute 20; then the limit is lifted.
    pub fn built_in(name: &str) -> Option<Self> {
        const MIN: f64 = 60.0;
        let (segments, length) = match name {
            "step" => (
                vec![(0.0, 5.0), (10.0 * MIN, 50.0), (30.0 * MIN, 5.0)],
                40.0 * MIN,
            ),
            "spike" => (
                vec![(0.0, 5.0), (10.0 * MIN, 100.0), (12.0 * MIN, 5.0)],
                30.0 * MIN,
            ),
            "daily-sine" | "sine" => {
                let period = 7200.0;
                let step = 30.0;
                let n = (period / step) as usize;
                let segments = (0..n)
                    .map(|i| {
                        let start = i as f64 * step;
                        let mid = start + step / 2.0;
                        let rate = 21.0 - 19.0 * (std::f64::consts::TAU * mid / period).cos();
                        (start, (rate * 100.0).round() / 100.0)
                    })
                    .collect();
                (segments, period)
            }
            "capped-downstream" => {
                let trace = Self::new(
                    "capped-downstream",
                    vec![(0.0, 5.0), (10.0 * MIN, 40.0), (30.0 * MIN, 5.0)],
                    40.0 * MIN,
                )
                .ok()?;
                return Some(trace.with_downstream(vec![(0.0, 20.0), (20.0 * MIN, f64::INFINITY)]));
            }
            _ => return None,
        };
        let name = if name == "sine" { "daily-sine" } else { name };
        Some(Self {
            name: name.to_owned(),
            segments,
            length,
            downstream: Vec::new(),
        })
    }

    /// A built-in trace by name, or else the CSV file at that path.
    pub fn load(spec: &str) -> anyhow::Result<Self> {
        if let Some(trace) = Self::built_in(spec) {
            return Ok(trace);
        }
        let path = Path::new(spec);
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read trace file `{spec}` (built-in traces: {})",
                BUILT_IN.join(", ")
            )
        })?;
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("trace");
        Self::parse_csv(name, &text).with_context(|| format!("trace file `{spec}`"))
    }

    /// Parses `time_seconds,arrivals_per_second` rows: each row starts a segment that lasts until
    /// the next row; the last row's time is the trace's end (its rate holds only past the end,
    /// with a longer `--duration`). A first line that is not numeric is a header; blank lines and
    /// lines starting with `#` are skipped. Errors name the 1-based line.
    pub fn parse_csv(name: &str, text: &str) -> anyhow::Result<Self> {
        let mut segments: Vec<(f64, f64)> = Vec::new();
        let mut seen_row = false;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim().trim_start_matches('\u{feff}');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let first_row = !seen_row;
            seen_row = true;
            if first_row && fields.first().is_some_and(|f| f.parse::<f64>().is_err()) {
                // A header such as `time_seconds,arrivals_per_second`.
                continue;
            }
            if fields.len() != 2 {
                bail!(
                    "line {line_no}: expected 2 fields `time_seconds,arrivals_per_second`, found {}: `{line}`",
                    fields.len()
                );
            }
            let time: f64 = fields[0].parse().map_err(|_| {
                anyhow::anyhow!(
                    "line {line_no}: time_seconds `{}` is not a number",
                    fields[0]
                )
            })?;
            let rate: f64 = fields[1].parse().map_err(|_| {
                anyhow::anyhow!(
                    "line {line_no}: arrivals_per_second `{}` is not a number",
                    fields[1]
                )
            })?;
            if !time.is_finite() || time < 0.0 {
                bail!("line {line_no}: time_seconds {time} must be a finite number >= 0");
            }
            if let Some(&(previous, _)) = segments.last()
                && time <= previous
            {
                bail!(
                    "line {line_no}: time_seconds {time} must be greater than the previous row's {previous}"
                );
            }
            check_rate(rate).with_context(|| format!("line {line_no}"))?;
            segments.push((time, rate));
        }
        let Some(&(end, _)) = segments.last() else {
            bail!("no data rows (expected `time_seconds,arrivals_per_second` lines)");
        };
        if end <= 0.0 {
            bail!(
                "the trace has no length: the last row's time is its end, so it needs at least two rows"
            );
        }
        Self::new(name, segments, end)
    }
}

fn check_rate(rate: f64) -> anyhow::Result<()> {
    if !rate.is_finite() {
        bail!("arrivals_per_second {rate} is not a finite number");
    }
    if rate < 0.0 {
        bail!("arrivals_per_second {rate} is negative");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_traces_have_the_documented_shape() {
        let step = Trace::built_in("step").expect("step");
        assert_eq!(step.length(), 2400.0);
        assert_eq!(step.rate_at(0.0), 5.0);
        assert_eq!(step.rate_at(599.9), 5.0);
        assert_eq!(step.rate_at(600.0), 50.0);
        assert_eq!(step.rate_at(1800.0), 5.0);
        let spike = Trace::built_in("spike").expect("spike");
        assert_eq!(spike.rate_at(660.0), 100.0);
        assert_eq!(spike.rate_at(720.0), 5.0);
        assert_eq!(spike.length(), 1800.0);
        let sine = Trace::built_in("sine").expect("sine");
        assert_eq!(sine.name, "daily-sine");
        assert!((sine.rate_at(0.0) - 2.0).abs() < 0.1);
        assert!((sine.rate_at(3600.0) - 40.0).abs() < 0.1);
        assert!((sine.peak() - 40.0).abs() < 0.1);
        assert!(Trace::built_in("nope").is_none());
    }

    #[test]
    fn csv_with_header_comments_and_blank_lines() {
        let t = Trace::parse_csv(
            "t",
            "time_seconds,arrivals_per_second\n# comment\n\n0,1\n10, 2.5\n30,0\n",
        )
        .expect("parses");
        assert_eq!(t.segments(), &[(0.0, 1.0), (10.0, 2.5), (30.0, 0.0)]);
        assert_eq!(t.length(), 30.0);
        assert_eq!(t.rate_at(15.0), 2.5);
        let no_header = Trace::parse_csv("t", "5,3\n20,3").expect("parses");
        assert_eq!(no_header.rate_at(1.0), 0.0, "0 before the first row");
        assert_eq!(no_header.rate_at(5.0), 3.0);
    }

    #[test]
    fn csv_errors_name_the_line() {
        let cases = [
            ("0,1\n10,2,3\n", "line 2: expected 2 fields"),
            (
                "time,rate\n0,1\n10,abc\n",
                "line 3: arrivals_per_second `abc` is not a number",
            ),
            ("0,1\nx,2\n", "line 2: time_seconds `x` is not a number"),
            ("0,1\n10,-3\n", "line 2"),
            (
                "0,1\n10,2\n10,3\n",
                "line 3: time_seconds 10 must be greater",
            ),
            ("0,1\n-5,2\n", "line 2: time_seconds -5"),
            ("time,rate\n", "no data rows"),
            ("0,4\n", "no length"),
        ];
        for (text, want) in cases {
            let err = Trace::parse_csv("t", text).expect_err(text);
            let msg = format!("{err:#}");
            assert!(msg.contains(want), "{text:?}: `{msg}` lacks `{want}`");
        }
        let negative = format!(
            "{:#}",
            Trace::parse_csv("t", "0,1\n10,-3\n").expect_err("neg")
        );
        assert!(negative.contains("negative"), "{negative}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Trace::load("/nonexistent/trace.csv").expect_err("missing");
        assert!(format!("{err:#}").contains("cannot read trace file `/nonexistent/trace.csv`"));
    }
}
