//! The one path from text to a config: where the text comes from (a file,
//! or `$FANOUT_CONFIG_TOML`), parsing with toml's line and column, then
//! validation. `fanout run`, `check-config` and the hot reload all load
//! through here; the scenario loader shares `read_file` and `parse_toml`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::{Config, Problem, render};

/// The environment variable that, when set and not empty, holds the whole
/// config in place of the file (an ECS task definition sets it; the
/// distroless image has no shell to write a file).
pub const CONFIG_ENV: &str = "FANOUT_CONFIG_TOML";

// The cause is part of the message and deliberately not `source()`: the
// CLI prints error chains (`{:#}`), which would show it twice.

/// A file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} {path}: {error}")]
pub struct ReadError {
    /// What the file holds ("config file", "scenario").
    pub what: &'static str,
    /// The file as given.
    pub path: String,
    /// Why it cannot be read.
    pub error: std::io::Error,
}

/// Text that is not TOML of the expected shape. toml's message carries the
/// line and column, the offending text and what was expected there.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {}", .error.to_string().trim_end())]
pub struct ParseError {
    /// Where the text came from: a path or `$FANOUT_CONFIG_TOML`.
    pub path: String,
    /// toml's error, with the location.
    pub error: toml::de::Error,
}

/// Why a config could not be loaded: one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The text is not a config (syntax, a type, an unknown field).
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The values are not usable: every problem, with its field path.
    #[error("{path}: {} problem(s):\n{}", problems.len(), render(problems))]
    Invalid {
        /// Where the text came from.
        path: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// A whole file as text; `what` says what it holds, for the error.
pub fn read_file(path: &Path, what: &'static str) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(|error| ReadError {
        what,
        path: path.display().to_string(),
        error,
    })
}

/// Parse TOML text into a `T`; `origin` names the text in the error.
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ParseError> {
    toml::from_str(text).map_err(|error| ParseError {
        path: origin.to_string(),
        error,
    })
}

/// Where `fanout run`'s and `check-config`'s config comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file, polled and re-read on SIGHUP.
    File(PathBuf),
    /// `$FANOUT_CONFIG_TOML`: fixed for the life of the process.
    Env,
}

impl Source {
    /// `$FANOUT_CONFIG_TOML` when it is set and not empty, else `path`.
    pub fn resolve(path: &Path) -> Source {
        if env_config().is_some() {
            Source::Env
        } else {
            Source::File(path.to_path_buf())
        }
    }

    /// The name shown in errors and logs.
    pub fn origin(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Env => format!("${CONFIG_ENV}"),
        }
    }

    /// The config's text.
    pub fn read(&self) -> Result<String, ReadError> {
        match self {
            Source::File(p) => read_file(p, "config file"),
            Source::Env => Ok(env_config().unwrap_or_default()),
        }
    }

    /// Read, parse and validate for AWS, as `fanout run` needs it; the
    /// text is returned too (the reference a reload compares with).
    pub fn load_for_aws(&self) -> Result<(Config, String), LoadError> {
        let text = self.read()?;
        let cfg = Config::from_text_for_aws(&text, &self.origin())?;
        Ok((cfg, text))
    }
}

/// `$FANOUT_CONFIG_TOML`, when it is set and not empty.
fn env_config() -> Option<String> {
    std::env::var(CONFIG_ENV)
        .ok()
        .filter(|text| !text.trim().is_empty())
}

impl Config {
    /// Parse and validate TOML text (every problem at once); `origin`
    /// names it in errors.
    pub fn from_text(text: &str, origin: &str) -> Result<Config, LoadError> {
        checked(text, origin, Config::validate)
    }

    /// As `from_text`, with the problems that only matter against real AWS
    /// (`validate_for_aws`): what `fanout run`, `check-config` and a reload
    /// require.
    pub fn from_text_for_aws(text: &str, origin: &str) -> Result<Config, LoadError> {
        checked(text, origin, Config::validate_for_aws)
    }
}

fn checked(
    text: &str,
    origin: &str,
    validate: fn(&Config) -> Vec<Problem>,
) -> Result<Config, LoadError> {
    let config: Config = parse_toml(text, origin)?;
    let problems = validate(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(LoadError::Invalid {
            path: origin.to_string(),
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_refused_with_its_name() {
        let err = Config::from_text("[controller]\nceilling = 5\n", "x.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("x.toml"), "{text}");
        assert!(text.contains("ceilling"), "{text}");
    }

    #[test]
    fn a_parse_error_names_the_origin_line_and_column() {
        let err = Config::from_text("[controller]\nceiling = \"x\"\n", "f.toml").unwrap_err();
        assert!(matches!(err, LoadError::Parse(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("f.toml: TOML parse error at line 2, column 11"),
            "{text}"
        );
        assert!(text.contains("expected u32"), "{text}");
    }

    #[test]
    fn a_missing_file_is_named_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let err = Config::load(&path).unwrap_err();
        assert!(matches!(err, LoadError::Read(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("cannot read config file ") && text.contains("absent.toml: "),
            "{text}"
        );
    }

    #[test]
    fn a_file_source_is_read_and_named_by_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fanout.toml");
        std::fs::write(&path, "[controller]\nceiling = 0\n").unwrap();
        let source = Source::File(path.clone());
        assert_eq!(source.origin(), path.display().to_string());
        let (shown, problems) = match source.load_for_aws() {
            Err(LoadError::Invalid { path, problems }) => (path, problems),
            other => panic!("expected Invalid, got {other:?}"),
        };
        assert_eq!(shown, path.display().to_string());
        assert_eq!(problems[0].field, "controller.ceiling");
        assert_eq!(Source::Env.origin(), "$FANOUT_CONFIG_TOML");
    }

    #[test]
    fn the_aws_load_adds_the_aws_only_problems() {
        assert!(Config::from_text("", "t").is_ok());
        let Err(LoadError::Invalid { problems, .. }) = Config::from_text_for_aws("", "t") else {
            panic!("an empty config was accepted for AWS");
        };
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["queues", "aws.state_machine_arn"]);
    }
}
