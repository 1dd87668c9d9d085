//! `fanout check-config`: parse a config and list every problem with its
//! location (the TOML line and column, or the field path).

use std::path::Path;

use crate::config::{Config, LoadError, ReadError, Source};

/// Every problem of the config, as printable lines (`FILE: field:
/// message`); empty when it is usable with `fanout run`. The config is
/// `$FANOUT_CONFIG_TOML` when that is set and not empty, else the file.
pub fn check_config(path: &Path) -> Result<Vec<String>, ReadError> {
    match Source::resolve(path).load_for_aws() {
        Ok(_) => Ok(Vec::new()),
        Err(LoadError::Read(e)) => Err(e),
        Err(e) => Ok(lines(&e)),
    }
}

/// Every problem of a config's text; `origin` names it.
pub fn check_text(text: &str, origin: &str) -> Vec<String> {
    match Config::from_text_for_aws(text, origin) {
        Ok(_) => Vec::new(),
        Err(e) => lines(&e),
    }
}

/// A load error as printable lines: one per problem (`FILE: field:
/// message`), or the error itself (a parse error carries its line).
pub fn lines(e: &LoadError) -> Vec<String> {
    match e {
        LoadError::Invalid { path, problems } => {
            problems.iter().map(|p| format!("{path}: {p}")).collect()
        }
        other => vec![other.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_have_a_line() {
        let p = check_text("[controller]\nceiling = \"x\"\n", "f.toml");
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("line 2"), "{}", p[0]);
    }

    #[test]
    fn every_problem_is_listed() {
        let p = check_text(
            "[controller]\nceiling = 0\n[http]\nlisten = \"nowhere\"\n",
            "f.toml",
        );
        let text = p.join("\n");
        for f in [
            "controller.ceiling",
            "http.listen",
            "queues",
            "aws.state_machine_arn",
        ] {
            assert!(text.contains(f), "{f} missing from {text}");
        }
    }
}
