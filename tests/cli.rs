//! The `fanout simulate` command as a user runs it.

use std::process::Command;

fn fanout() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fanout"))
}

fn scenario() -> String {
    format!("{}/tests/scenarios/small.toml", env!("CARGO_MANIFEST_DIR"))
}

/// The field names README's report table gives (its first column, in
/// backticks), sorted as serde_json keeps an object's keys.
fn documented_report_fields() -> Vec<&'static str> {
    let readme = include_str!("../README.md");
    let table = readme
        .split("### The report")
        .nth(1)
        .expect("README has \"### The report\"");
    let mut fields: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header and its rule
        .flat_map(|l| l.split('|').nth(1).unwrap().split('`').skip(1).step_by(2))
        .collect();
    fields.sort_unstable();
    fields
}

#[test]
fn simulate_json_is_one_object_with_the_documented_fields() {
    for policy in ["adaptive", "seed", "fixed"] {
        let out = fanout()
            .args([
                "simulate",
                "--scenario",
                &scenario(),
                "--json",
                "--seed",
                "7",
                "--policy",
                policy,
            ])
            .output()
            .expect("run fanout");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            stdout.trim_end().lines().count(),
            1,
            "one line of JSON: {stdout}"
        );
        let r: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
        let fields: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            documented_report_fields(),
            "{policy}: the report's fields and README's table (\"The report\") differ"
        );
        for (name, f) in r["functions"].as_object().unwrap() {
            for key in ["peak", "limit", "throttles"] {
                assert!(f.get(key).is_some(), "{policy}: {name} lacks {key}: {r}");
            }
        }
        assert_eq!(r["scenario"], "small");
        assert_eq!(r["policy"], policy);
        assert_eq!(r["seed"], 7);
        assert_eq!(r["messages"], 2006);
        assert_eq!(r["lost"], 0, "{policy}: {r}");
        assert_eq!(r["duplicates"], 0, "{policy}: {r}");
        assert!(
            r["dlq"].as_u64().unwrap() >= 1,
            "the non-JSON body ends in the DLQ: {r}"
        );
        assert!(r["api_calls"]["sqs"].as_u64().unwrap() > 0);
        if policy != "seed" {
            assert!(
                r["peak_concurrency"].as_u64().unwrap() <= 300,
                "{policy}: {r}"
            );
            assert_eq!(
                r["dlq"], 1,
                "{policy}: only the bad body is dead-lettered: {r}"
            );
            assert_eq!(r["max_receive_count"], 1, "{policy}: {r}");
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = || {
        let out = fanout()
            .args([
                "simulate",
                "--scenario",
                &scenario(),
                "--json",
                "--seed",
                "3",
            ])
            .output()
            .unwrap();
        let mut r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        r.as_object_mut().unwrap().remove("wall_s");
        r
    };
    assert_eq!(run(), run());
}

#[test]
fn human_summary_shows_the_report_fields() {
    let out = fanout()
        .args(["simulate", "--scenario", &scenario()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for field in [
        "utilization",
        "peak_concurrency",
        "efficiency",
        "lost",
        "duplicates",
    ] {
        assert!(text.contains(field), "summary lacks {field}:\n{text}");
    }
}

#[test]
fn a_bad_scenario_file_is_named_with_its_problem() {
    let dir = std::env::temp_dir().join(format!("fanout-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "name = 'x'\nceiling = 10\nworkflow = []\n[workload]\nbulk = 1\nbulkk = 2\n",
    )
    .unwrap();
    let out = fanout()
        .args(["simulate", "--scenario", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("bulkk"), "{err}");
}

#[test]
fn a_bad_config_lists_every_problem() {
    let dir = std::env::temp_dir().join(format!("fanout-cli-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fanout.toml");
    std::fs::write(
        &path,
        "[controller]\nceiling = 0\ntick_ms = 0\n[naming]\ntemplate = \"{\"\n",
    )
    .unwrap();
    let out = fanout()
        .args([
            "simulate",
            "--scenario",
            &scenario(),
            "--config",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for field in [
        "controller.ceiling",
        "controller.tick_ms",
        "naming.template",
    ] {
        assert!(err.contains(field), "{field} missing from:\n{err}");
    }
}

#[test]
fn check_config_reads_the_environment_variable_first() {
    let out = fanout()
        .args(["check-config", "/nonexistent/fanout.toml"])
        .env("FANOUT_CONFIG_TOML", "[controller]\nceiling = 0\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("$FANOUT_CONFIG_TOML: controller.ceiling"),
        "{text}"
    );
}

#[test]
fn healthcheck_fails_when_nothing_answers() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/healthz",
        l.local_addr().unwrap().port()
    );
    drop(l);
    let out = fanout()
        .args(["healthcheck", "--url", &url, "--timeout-secs", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"));
}
