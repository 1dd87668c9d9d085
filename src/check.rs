//! `fanout check-config`: parse a config and list every problem with its
//! location (the TOML line and column, or the field path).

use std::path::Path;

use crate::config::{Config, Problem};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// Every problem of the file, as printable lines (`FILE: field: message`);
/// empty when the file is usable with `fanout run`.
pub fn check_config(path: &Path) -> Result<Vec<String>, CheckError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CheckError::Read {
        path: shown.clone(),
        source,
    })?;
    Ok(check_text(&text, &shown))
}

pub fn check_text(text: &str, origin: &str) -> Vec<String> {
    match toml::from_str::<Config>(text) {
        // toml's message carries "line L, column C" and the offending text.
        Err(e) => vec![format!("{origin}: {}", e.to_string().trim_end())],
        Ok(cfg) => cfg
            .validate_for_aws()
            .into_iter()
            .map(|Problem { field, message }| format!("{origin}: {field}: {message}"))
            .collect(),
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
