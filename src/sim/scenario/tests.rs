//! Scenario parsing, defaults and errors.

use super::*;

#[test]
fn builtin_parses_and_matches_the_published_run() {
    let s = Scenario::builtin("exchange-227k").unwrap();
    assert_eq!(s.workload.bulk, 227_000);
    assert_eq!(s.ceiling, 19_000);
    assert_eq!(s.lambda.account_limit, 20_000);
    // Mean Lambda-seconds per execution × messages / 10,000 ≈ 56 min.
    let mean = |m: f64, sg: f64| m * (sg * sg / 2.0).exp();
    let mut per_exec = 0.0;
    for st in &s.workflow {
        if st.task.is_some() {
            per_exec += mean(st.median_secs, st.sigma);
        } else {
            let items = f64::from(st.map_items.unwrap());
            per_exec += items
                * st.iteration
                    .iter()
                    .map(|t| mean(t.median_secs, t.sigma))
                    .sum::<f64>();
        }
    }
    let minutes = per_exec * 227_000.0 / 10_000.0 / 60.0;
    assert!((54.0..58.0).contains(&minutes), "{minutes} min at 10,000");
}

#[test]
fn a_step_must_be_a_task_or_a_map() {
    let text = "name='x'\nceiling=10\n[workload]\nbulk=1\n[[workflow]]\nmedian_secs=1.0\n";
    let err = Scenario::parse(text, "x.toml").unwrap_err().to_string();
    assert!(err.contains("workflow[0]"), "{err}");
}

const MINIMAL: &str = "name = 'x'\nceiling = 10\n[workload]\n\
    [[workflow]]\ntask = 'a'\nmedian_secs = 1.0\n\
    [[workflow]]\nmap_items = 2\n[[workflow.iteration]]\ntask = 'b'\nmedian_secs = 2.0\n";

#[test]
fn omitted_knobs_and_empty_sections_are_the_defaults() {
    let with_sections =
        format!("{MINIMAL}[sqs]\n[sfn]\n[sfn.retry]\n[lambda]\n[other_load]\n[cloudwatch]\n");
    for text in [MINIMAL, &with_sections] {
        let s = Scenario::parse(text, "t").unwrap();
        assert_eq!((s.seed, s.max_virtual_secs), (1, 6 * 3600));
        assert_eq!(s.workload, Workload::default());
        assert_eq!(s.sqs, SqsModel::DEFAULT);
        assert_eq!(s.sfn, SfnModel::DEFAULT);
        assert_eq!(s.lambda, LambdaModel::DEFAULT);
        assert_eq!(s.other_load, OtherLoad::default());
        assert_eq!(s.cloudwatch, CloudWatchModel::DEFAULT);
        assert!(s.faults.is_empty());
        let (task, map) = (&s.workflow[0], &s.workflow[1]);
        assert_eq!((task.sigma, task.max_concurrency), (0.3, 3));
        assert_eq!((map.sigma, map.max_concurrency), (0.3, 3));
        assert_eq!(map.iteration[0].sigma, 0.3);
    }
}

#[test]
fn required_fields_stay_required() {
    for (field, text) in [
        ("name", MINIMAL.replace("name = 'x'\n", "")),
        ("ceiling", MINIMAL.replace("ceiling = 10\n", "")),
        ("workload", MINIMAL.replace("[workload]\n", "")),
        (
            "workflow",
            "name = 'x'\nceiling = 10\n[workload]\n".to_string(),
        ),
        ("task", MINIMAL.replace("task = 'b'\n", "")),
        ("median_secs", MINIMAL.replace("median_secs = 2.0\n", "")),
    ] {
        let err = Scenario::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            err.contains(&format!("missing field `{field}`")),
            "{field}: {err}"
        );
    }
}

/// The built-in example shows every knob; those set away from their
/// default for the example say what the default is.
#[test]
fn the_example_shows_the_defaults() {
    let mut s = Scenario::builtin("exchange-227k").unwrap();
    for (key, default) in [
        ("account_limit", "Default 1000."),
        ("error_rate", "Default 0."),
        ("base", "Default 0."),
        ("missing_probability", "Default 0."),
    ] {
        let at = EXCHANGE_227K.find(&format!("\n{key} = ")).unwrap();
        let comment = &EXCHANGE_227K[..at][EXCHANGE_227K[..at].rfind("\n\n").unwrap()..];
        assert!(
            comment.contains(default),
            "{key}: no \"{default}\" in {comment}"
        );
    }
    s.lambda.account_limit = LambdaModel::DEFAULT.account_limit;
    s.lambda.error_rate = LambdaModel::DEFAULT.error_rate;
    s.other_load.base = 0.0;
    s.cloudwatch.missing_probability = CloudWatchModel::DEFAULT.missing_probability;
    assert_eq!((s.seed, s.max_virtual_secs), (1, 6 * 3600));
    assert_eq!(s.sqs, SqsModel::DEFAULT);
    assert_eq!(s.sfn, SfnModel::DEFAULT);
    assert_eq!(s.lambda, LambdaModel::DEFAULT);
    assert_eq!(s.other_load, OtherLoad::default());
    assert_eq!(s.cloudwatch, CloudWatchModel::DEFAULT);
}

#[test]
fn a_bad_file_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    let err = Scenario::load(&path).unwrap_err().to_string();
    assert!(err.starts_with("cannot read scenario "), "{err}");
    std::fs::write(&path, format!("{MINIMAL}[sqs]\nlatency = 5\n")).unwrap();
    let err = Scenario::load(&path).unwrap_err().to_string();
    let shown = format!("{}: TOML parse error at line 13, column 1", path.display());
    assert!(err.starts_with(&shown), "{err}");
    assert!(err.contains("unknown field `latency`"), "{err}");
}

#[test]
fn an_inline_map_runs_at_most_40_iterations_at_once() {
    let with = |n: u32| {
        let text = MINIMAL.replace(
            "map_items = 2\n",
            &format!("map_items = 2\nmax_concurrency = {n}\n"),
        );
        Scenario::parse(&text, "t.toml")
    };
    assert!(with(40).is_ok());
    let err = with(41).unwrap_err().to_string();
    assert!(
        err.contains("workflow[1].max_concurrency is 41: an inline Map runs at most 40"),
        "{err}"
    );
}

#[test]
fn max_attempts_zero_is_asl_never_retry() {
    let text = format!("{MINIMAL}[sfn.retry]\nmax_attempts = 0\n");
    assert_eq!(
        Scenario::parse(&text, "t").unwrap().sfn.retry.max_attempts,
        0
    );
}

#[test]
fn partial_minutes_and_the_transition_bucket_are_checked() {
    let text = format!(
        "{MINIMAL}[sfn]\nstate_transitions = {{ burst = 0.0, per_s = 5.0 }}\n\
         [cloudwatch]\npartial_probability = 1.5\nfill_secs = -1.0\n"
    );
    let err = Scenario::parse(&text, "t").unwrap_err().to_string();
    for want in [
        "sfn.state_transitions",
        "cloudwatch.partial_probability",
        "cloudwatch.fill_secs",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
}

#[test]
fn a_misspelt_fault_target_is_refused_not_silently_ignored() {
    let text = format!(
        "{MINIMAL}[[faults]]\nkind = \"api-errors\"\nservice = \"stepfunctions\"\n\
         start_secs = 0.0\nduration_secs = 10.0\nprobability = 0.5\n\
         [[faults]]\nkind = \"throttle-storm\"\napi = \"StartExecution\"\n\
         start_secs = 0.0\nduration_secs = 10.0\nprobability = 0.5\n"
    );
    let err = Scenario::parse(&text, "t").unwrap_err().to_string();
    assert!(
        err.contains("faults[0].service: \"stepfunctions\""),
        "{err}"
    );
    assert!(err.contains("faults[1].api: \"StartExecution\""), "{err}");
}
