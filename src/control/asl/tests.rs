// The widths are sums and products of small integers: exact in f64.
#![allow(clippy::float_cmp)]

use super::*;

fn lambda(name: &str) -> Value {
    serde_json::json!({
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": { "FunctionName": name, "Payload.$": "$" },
        "Next": "x"
    })
}

fn def(states: &Value) -> String {
    serde_json::json!({ "StartAt": "a", "States": states }).to_string()
}

#[test]
fn a_sequence_is_as_wide_as_its_widest_state() {
    let d = def(&serde_json::json!({
        "a": lambda("prepare"),
        "b": {
            "Type": "Map",
            "MaxConcurrency": 3,
            "ItemProcessor": { "StartAt": "p", "States": { "p": lambda("predict") } },
            "Next": "c"
        },
        "c": lambda("arn:aws:lambda:us-east-1:123456789012:function:publish:prod"),
        "d": { "Type": "Succeed" }
    }));
    let w = widths(&d).unwrap();
    assert_eq!(w.total, Some(3.0));
    assert_eq!(w.function("prepare"), Some(1.0));
    assert_eq!(w.function("predict"), Some(3.0));
    assert_eq!(w.function("publish"), Some(1.0));
    assert_eq!(w.function("other"), Some(0.0));
}

#[test]
fn parallel_branches_add_and_maps_multiply() {
    let inner = serde_json::json!({
        "StartAt": "p",
        "States": {
            "p": {
                "Type": "Parallel",
                "Branches": [
                    { "StartAt": "x", "States": { "x": lambda("f") } },
                    { "StartAt": "y", "States": { "y": lambda("f"), "z": lambda("g") } }
                ]
            }
        }
    });
    let d = def(&serde_json::json!({
        "a": { "Type": "Map", "MaxConcurrency": 5, "Iterator": inner }
    }));
    let w = widths(&d).unwrap();
    // Each iteration runs f twice at once (both branches), or f and g.
    assert_eq!(w.total, Some(10.0));
    assert_eq!(w.function("f"), Some(10.0));
    assert_eq!(w.function("g"), Some(5.0));
}

#[test]
fn an_inline_map_without_max_concurrency_runs_at_most_40() {
    let d = def(&serde_json::json!({
        "a": { "Type": "Map", "ItemProcessor": { "StartAt": "p", "States": { "p": lambda("f") } } },
        "b": { "Type": "Map", "MaxConcurrency": 400,
               "ItemProcessor": { "StartAt": "p", "States": { "p": lambda("g") } } }
    }));
    let w = widths(&d).unwrap();
    assert_eq!(w.function("f"), Some(INLINE_MAP_MAX));
    assert_eq!(w.function("g"), Some(INLINE_MAP_MAX));
}

#[test]
fn what_the_definition_cannot_bound_is_said() {
    let distributed = def(&serde_json::json!({
        "a": { "Type": "Map", "ItemProcessor": {
            "ProcessorConfig": { "Mode": "DISTRIBUTED", "ExecutionType": "STANDARD" },
            "StartAt": "p", "States": { "p": lambda("f") } } }
    }));
    assert_eq!(widths(&distributed).unwrap().total, None);
    let dynamic = def(&serde_json::json!({
        "a": { "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
               "Parameters": { "FunctionName.$": "$.fn" } }
    }));
    let w = widths(&dynamic).unwrap();
    assert_eq!(w.total, Some(1.0));
    assert!(w.dynamic_function);
    assert_eq!(w.function("f"), None);
    let nested = def(&serde_json::json!({
        "a": { "Type": "Task", "Resource": "arn:aws:states:::states:startExecution.sync:2" }
    }));
    assert_eq!(widths(&nested).unwrap().total, None);
    let sdk = def(&serde_json::json!({
        "a": { "Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage" }
    }));
    assert_eq!(widths(&sdk).unwrap(), Widths::zero());
}

#[test]
fn a_bad_definition_is_an_error_not_a_panic() {
    assert!(matches!(widths("not json"), Err(AslError::Json(_))));
    assert_eq!(widths("{}"), Err(AslError::Shape("States")));
    let mut deep = serde_json::json!({ "StartAt": "p", "States": { "p": lambda("f") } });
    for _ in 0..40 {
        deep = serde_json::json!({ "StartAt": "m", "States": { "m": {
            "Type": "Map", "MaxConcurrency": 1, "ItemProcessor": deep } } });
    }
    assert!(widths(&deep.to_string()).is_err());
}

#[test]
fn function_names_come_out_of_arns() {
    assert_eq!(function_name("predict").as_deref(), Some("predict"));
    assert_eq!(
        function_name("arn:aws:lambda:eu-west-1:1:function:predict:$LATEST").as_deref(),
        Some("predict")
    );
    assert_eq!(
        function_name("1:function:predict").as_deref(),
        Some("predict")
    );
    assert_eq!(function_name("arn:aws:states:::lambda:invoke"), None);
}
