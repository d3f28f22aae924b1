//! `workerpool-operator simulate`: the model's invariants and the command's errors.

use std::path::PathBuf;
use std::process::Command;

use workerpool_operator::simulate::{Outcome, Params, Policy, Stats, Trace, compare, simulate};
use workerpool_scaling::Mode;

fn trace(segments: &[(f64, f64)], length: f64) -> Trace {
    Trace::new("test", segments.to_vec(), length).expect("valid trace")
}

fn assert_conserved(label: &str, s: &Stats) {
    assert_eq!(
        s.initial_tasks + s.arrived,
        s.completed + s.waiting_at_end + s.in_flight_at_end,
        "{label}: tasks are conserved: {s:?}"
    );
    assert_eq!(s.lost, 0, "{label}: {s:?}");
}

/// Requested replicas at second `t` (samples are one per second from 0).
fn replicas_at(o: &Outcome, t: usize) -> i32 {
    o.samples[t].replicas
}

#[test]
fn tasks_are_conserved_in_both_policies() {
    let params = Params::default();
    for name in ["step", "spike"] {
        let t = Trace::built_in(name).expect("built-in");
        let c = compare(&t, &params);
        for o in [&c.ours, &c.hpa] {
            let label = format!("{name}/{}", o.policy.name());
            assert_conserved(&label, &o.stats);
            assert!(o.stats.arrived > 0, "{label}");
        }
    }
    // A cold start, fractional rates and a trace that ends idle.
    let params = Params {
        cold_start: true,
        service_rate: 0.7,
        scaling_factor: 0.13,
        ..Params::default()
    };
    let t = trace(&[(0.0, 3.3), (200.0, 17.9), (400.0, 0.0)], 900.0);
    for policy in [Policy::Ours, Policy::Hpa] {
        let o = simulate(&t, &params, policy);
        assert_conserved(policy.name(), &o.stats);
        assert_eq!(
            o.stats.waiting_at_end + o.stats.in_flight_at_end,
            0,
            "drained when idle"
        );
    }
}

#[test]
fn ours_never_interrupts_or_loses_a_task() {
    let params = Params::default();
    for name in ["step", "spike"] {
        let t = Trace::built_in(name).expect("built-in");
        let o = simulate(&t, &params, Policy::Ours);
        assert_eq!(o.stats.requeued, 0, "{name}: drained between tasks");
        assert_eq!(o.stats.lost, 0, "{name}");
        assert!(
            o.stats.scale_events > 0,
            "{name}: ours scaled down at some point"
        );
    }
    // The HPA model does interrupt tasks when it scales down (they are requeued).
    let spike = Trace::built_in("spike").expect("spike");
    assert!(simulate(&spike, &params, Policy::Hpa).stats.requeued > 0);
}

#[test]
fn hpa_scale_down_stabilization_holds_replicas_for_300_seconds() {
    // Steady at 50/s, then the load drops to 5/s at 300 s.
    let t = trace(&[(0.0, 50.0), (300.0, 5.0)], 1200.0);
    let params = Params::default();
    let hpa = simulate(&t, &params, Policy::Hpa);
    let before = replicas_at(&hpa, 299);
    assert_eq!(before, 50, "warm start at the steady state");
    // The last steady recommendation (50) was made at or before 300 s: the count cannot fall
    // while it is in the 300 s window.
    for s in 300..585 {
        assert!(
            replicas_at(&hpa, s) >= before,
            "hpa dropped to {} at {s} s",
            replicas_at(&hpa, s)
        );
    }
    assert!(
        replicas_at(&hpa, 700) < before,
        "hpa scales down once the window has passed"
    );
    // Ours scales down after its own 30 s window. (It starts with the warm start's backlog of
    // ten seconds of work per worker, which it drains with at most 10 % more workers.)
    let ours = simulate(&t, &params, Policy::Ours);
    assert!((50..=55).contains(&replicas_at(&ours, 299)));
    assert!(replicas_at(&ours, 400) < 50, "ours released within 100 s");
}

#[test]
fn constant_load_holds_the_needed_workers_in_both_policies() {
    // At the steady state of a constant load, both policies keep ceil(rate / service rate).
    for (rate, service_rate, want) in [(20.0, 1.0, 20), (12.0, 2.0, 6), (3.0, 0.5, 6)] {
        let params = Params {
            service_rate,
            scaling_factor: 1.0 / (service_rate * 10.0),
            ..Params::default()
        };
        let t = trace(&[(0.0, rate)], 1800.0);
        for policy in [Policy::Ours, Policy::Hpa] {
            let o = simulate(&t, &params, policy);
            assert_conserved(policy.name(), &o.stats);
            if policy == Policy::Ours {
                // The warm start's backlog (ten seconds of work per worker, the queue-length
                // rule's steady state) is drained with at most 10 % (or two) more workers (a poll's in-flight count can
                // read up to one 100 ms step of arrivals high).
                let surge = want + ((f64::from(want) * 0.1).ceil() as i32).max(2);
                assert!(
                    o.samples
                        .iter()
                        .all(|s| (want..=surge).contains(&s.replicas)),
                    "ours: {rate}/s at {service_rate}/s per worker"
                );
                assert!(o.stats.scale_events <= 4, "{:?}", o.stats);
                continue;
            }
            let seen: std::collections::BTreeSet<i32> =
                o.samples.iter().map(|s| s.replicas).collect();
            assert_eq!(
                seen,
                [want].into(),
                "{}: {rate}/s at {service_rate}/s per worker",
                policy.name()
            );
            assert_eq!(o.stats.scale_events, 0, "{}", policy.name());
        }
    }
}

#[test]
fn after_a_step_ours_settles_around_the_needed_workers() {
    // From the steady state of 5/s to a constant 20/s: the rate policy comes to rest within 5 %
    // of the need (the queue-length rule hunted between 17 and 22 here).
    let t = trace(&[(0.0, 5.0), (60.0, 20.0)], 2460.0);
    let o = simulate(&t, &Params::default(), Policy::Ours);
    let tail = &o.samples[o.samples.len() - 600..];
    assert!(
        tail.iter().all(|s| (20..=21).contains(&s.replicas)),
        "{:?}",
        tail.iter()
            .map(|s| s.replicas)
            .collect::<std::collections::BTreeSet<_>>()
    );
    // The specification's rule alone still hunts around the need.
    let spec = Params {
        mode: Mode::QueueLength,
        ..Params::default()
    };
    let q = simulate(&t, &spec, Policy::Ours);
    assert!(
        q.stats.scale_events > 10 * o.stats.scale_events.max(1),
        "{:?} vs {:?}",
        q.stats,
        o.stats
    );
}

/// The targets on the built-in traces, at the default start-up delay and at 60 s (see
/// the table in docs/scaling.md): at least 25 % fewer worker-seconds than the HPA model at an equal or lower
/// p95 wait everywhere; after the step at 10 s start-up: overshoot <= 10 %, settled within ±5 %
/// in <= 120 s, at least 10x fewer changes of desiredReplicas than the queue-length rule.
#[test]
fn targets_on_the_built_in_traces() {
    for delay in [10.0, 60.0] {
        let params = Params {
            startup_delay: delay,
            ..Params::default()
        };
        let spec = Params {
            mode: Mode::QueueLength,
            ..params.clone()
        };
        for name in ["step", "spike", "daily-sine"] {
            let t = Trace::built_in(name).expect("built-in");
            let c = compare(&t, &params);
            let label = format!("{name} at {delay} s");
            assert!(
                c.meets_target(),
                "{label}: {:+.1} % worker-seconds, p95 {:.1} vs {:.1}",
                c.worker_seconds_change(),
                c.ours.stats.p95_wait,
                c.hpa.stats.p95_wait
            );
            assert_eq!(c.ours.stats.requeued + c.ours.stats.lost, 0, "{label}");
            let before = simulate(&t, &spec, Policy::Ours);
            assert!(
                c.ours.stats.scale_events * 3 <= before.stats.scale_events.max(3),
                "{label}: {} changes vs {} with the queue-length rule",
                c.ours.stats.scale_events,
                before.stats.scale_events
            );
            if name == "step" {
                let s = c.step_ours.expect("step response");
                assert_eq!(s.need, 50);
                assert!(
                    c.ours.stats.scale_events * 10 <= before.stats.scale_events,
                    "{label}: {} vs {}",
                    c.ours.stats.scale_events,
                    before.stats.scale_events
                );
                if delay == 10.0 {
                    assert!(s.overshoot_percent <= 10.0 + 1e-9, "{label}: {s:?}");
                    assert!(
                        s.settle_seconds.is_some_and(|t| t <= 120.0),
                        "{label}: {s:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_capped_downstream_holds_the_count_and_scaling_resumes_when_it_is_lifted() {
    // 40/s from minute 10 while a downstream completes at most 20/s in all until minute 20.
    let t = Trace::built_in("capped-downstream").expect("built-in");
    let params = Params::default();
    let c = compare(&t, &params);
    let ours = &c.ours;
    // Held near the 20 workers that help (a probe adds a few now and then), well below the
    // HPA model, which goes to its maximum.
    let held = &ours.samples[700..1200];
    assert!(
        held.iter().all(|s| s.replicas <= 25),
        "{:?}",
        held.iter().map(|s| s.replicas).max()
    );
    assert!(c.hpa.samples[700..1200].iter().any(|s| s.replicas == 100));
    let terms: std::collections::BTreeSet<_> = ours
        .decisions
        .iter()
        .map(|(_, d)| d.term.as_str())
        .collect();
    assert!(terms.contains("Ineffective"), "{terms:?}");
    let evidence = ours
        .decisions
        .iter()
        .find_map(|(_, d)| d.evidence)
        .expect("evidence");
    assert!(evidence.observed < 0.25 * evidence.expected, "{evidence:?}");
    // The limit is lifted at minute 20: a probe helps and the backlog is drained.
    assert!(
        ours.samples[1200..1500].iter().any(|s| s.replicas > 40),
        "scaling resumed"
    );
    assert!(
        ours.samples.last().map_or(0, |s| s.queue_length) < 100,
        "the backlog is drained"
    );
    assert!(
        c.worker_seconds_change() <= -25.0,
        "{:+.1} %",
        c.worker_seconds_change()
    );
}

#[test]
fn csv_errors_name_the_line() {
    let err = Trace::parse_csv("t", "time_seconds,arrivals_per_second\n0,5\n60,five\n")
        .expect_err("malformed");
    assert!(format!("{err:#}").contains("line 3"), "{err:#}");
    let err = Trace::parse_csv("t", "0,5\n60,-1\n120,0\n").expect_err("negative");
    let msg = format!("{err:#}");
    assert!(msg.contains("line 2") && msg.contains("negative"), "{msg}");
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wp-simulate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn simulate_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_workerpool-operator"))
        .arg("simulate")
        .args(args)
        .output()
        .expect("run the binary")
}

#[test]
fn command_writes_the_table_csv_and_png() {
    let dir = out_dir("ok");
    let csv = dir.join("load.csv");
    std::fs::write(
        &csv,
        "time_seconds,arrivals_per_second\n0,4\n120,30\n240,4\n480,4\n",
    )
    .expect("write trace");
    let out = dir.join("out");
    let output = simulate_cmd(&[
        "--trace",
        csv.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for want in [
        "worker-s",
        "p95 wait",
        "load ",
        "ours",
        "hpa",
        "ours vs hpa",
    ] {
        assert!(stdout.contains(want), "missing `{want}` in\n{stdout}");
    }
    let rows = std::fs::read_to_string(out.join("replicas.csv")).expect("replicas.csv");
    let mut lines = rows.lines();
    assert_eq!(
        lines.next(),
        Some(
            "time_seconds,arrivals_per_second,ours_queue_length,ours_replicas,ours_pods,hpa_queue_length,hpa_replicas,hpa_pods"
        )
    );
    assert_eq!(lines.count(), 481, "one row per second, both ends");
    let png = std::fs::read(out.join("replicas.png")).expect("replicas.png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_a_clear_error_and_a_failure() {
    let dir = out_dir("bad");
    let malformed = dir.join("malformed.csv");
    std::fs::write(&malformed, "time_seconds,arrivals_per_second\n0,5\n60;7\n").expect("write");
    let negative = dir.join("negative.csv");
    std::fs::write(&negative, "0,5\n60,-7\n120,1\n").expect("write");
    let out = dir.join("out");
    let out = out.to_str().expect("utf-8 path");
    let missing = dir.join("missing.csv");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--trace", missing.to_str().expect("utf-8")],
            "cannot read trace file",
        ),
        (
            vec!["--trace", malformed.to_str().expect("utf-8")],
            "line 3: expected 2 fields",
        ),
        (
            vec!["--trace", negative.to_str().expect("utf-8")],
            "line 2: arrivals_per_second -7 is negative",
        ),
        (
            vec!["--trace", "step", "--service-rate", "0"],
            "--service-rate must be a positive number",
        ),
        (
            vec!["--trace", "step", "--service-rate", "-1"],
            "--service-rate must be a positive number, got -1",
        ),
        (
            vec!["--trace", "step", "--max-replicas", "0"],
            "--max-replicas must be >= 1",
        ),
    ];
    for (args, want) in cases {
        let mut all = args.clone();
        all.extend(["--out", out]);
        let output = simulate_cmd(&all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(want),
            "{args:?}: stderr `{stderr}` lacks `{want}`"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
