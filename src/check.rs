//! `fanout check-config`: parse a config and list every problem with its
//! location (the TOML line and column, or the field path).

use std::path::Path;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// The environment variable that, when set and not empty, holds the whole
/// config in place of the file (an ECS task definition sets it; the
/// distroless image has no shell to write a file).
pub const CONFIG_ENV: &str = "FANOUT_CONFIG_TOML";

/// The config's text and the name to show in errors: `$FANOUT_CONFIG_TOML`
/// when that is set and not empty, else the file.
pub fn config_source(path: &Path) -> Result<(String, String), CheckError> {
    if let Some(text) = env_config() {
        return Ok((text, format!("${CONFIG_ENV}")));
    }
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CheckError::Read {
        path: shown.clone(),
        source,
    })?;
    Ok((text, shown))
}

/// `$FANOUT_CONFIG_TOML`, when it is set and not empty.
pub fn env_config() -> Option<String> {
    std::env::var(CONFIG_ENV)
        .ok()
        .filter(|text| !text.trim().is_empty())
}

/// Every problem of the config, as printable lines (`FILE: field:
/// message`); empty when it is usable with `fanout run`.
pub fn check_config(path: &Path) -> Result<Vec<String>, CheckError> {
    let (text, shown) = config_source(path)?;
    Ok(check_text(&text, &shown))
}

pub fn check_text(text: &str, origin: &str) -> Vec<String> {
    match toml::from_str::<Config>(text) {
        // toml's message carries "line L, column C" and the offending text.
        Err(e) => vec![format!("{origin}: {}", e.to_string().trim_end())],
        Ok(cfg) => cfg
            .validate_for_aws()
            .into_iter()
            .map(|p| format!("{origin}: {p}"))
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
