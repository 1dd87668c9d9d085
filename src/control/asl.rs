//! The widest an execution can be, read from the state machine's definition
//! (Amazon States Language): the physical bound on Lambdas per execution,
//! whatever the config says.
//!
//! States of one branch run one after another, so a branch is as wide as
//! its widest state. A Lambda task is one Lambda; a Map runs at most
//! `MaxConcurrency` iterations at once (an inline Map at most 40, AWS's
//! limit); a Parallel runs every branch at once, so its widths add. Retries
//! and Catchers run after the failed attempt ended: they add nothing.

use std::collections::BTreeMap;

use serde_json::Value;

/// An inline Map runs at most this many iterations at once, whatever its
/// MaxConcurrency (0 or absent means "as many as allowed").
pub const INLINE_MAP_MAX: f64 = 40.0;
/// A Distributed Map runs up to this many child executions at once.
pub const DISTRIBUTED_MAP_MAX: f64 = 10_000.0;

/// The widest an execution of a definition can be.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Widths {
    /// The most Lambdas one execution runs at once, over all functions;
    /// `None` when the definition cannot bound it (a nested execution, a
    /// task that is not Lambda but may run Lambdas, a Distributed Map
    /// without MaxConcurrency).
    pub total: Option<f64>,
    /// The most invocations of each function one execution runs at once.
    pub per_function: BTreeMap<String, f64>,
    /// Some Lambda task names its function at run time (`FunctionName.$`):
    /// it may be any function, so no function's own bound is known.
    pub dynamic_function: bool,
}

impl Widths {
    /// No Lambda at all (a Pass, Wait, Choice, Succeed or Fail state).
    pub fn zero() -> Widths {
        Widths {
            total: Some(0.0),
            ..Widths::default()
        }
    }

    /// The bound on function `name`'s invocations per execution, if known:
    /// 0 for a function the definition never calls.
    pub fn function(&self, name: &str) -> Option<f64> {
        if self.dynamic_function {
            return None;
        }
        Some(self.per_function.get(name).copied().unwrap_or(0.0))
    }
}

/// Why a definition could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AslError {
    /// The text is not JSON.
    #[error("the state machine definition is not JSON: {0}")]
    Json(String),
    /// A required part is missing or of the wrong type.
    #[error("the state machine definition has no usable {0}")]
    Shape(&'static str),
}

/// The widths of a whole definition.
pub fn widths(definition: &str) -> Result<Widths, AslError> {
    let v: Value = serde_json::from_str(definition).map_err(|e| AslError::Json(e.to_string()))?;
    branch(&v, 0)
}

/// Nesting deeper than this is refused (a hostile definition).
const MAX_DEPTH: usize = 32;

/// A branch (`States` with `StartAt`): its widest state.
fn branch(v: &Value, depth: usize) -> Result<Widths, AslError> {
    if depth > MAX_DEPTH {
        return Err(AslError::Shape("nesting (deeper than 32)"));
    }
    let states = v
        .get("States")
        .and_then(Value::as_object)
        .ok_or(AslError::Shape("States"))?;
    let mut out = Widths::zero();
    for s in states.values() {
        let w = state(s, depth)?;
        out.total = match (out.total, w.total) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        for (f, n) in w.per_function {
            let e = out.per_function.entry(f).or_insert(0.0);
            *e = e.max(n);
        }
        out.dynamic_function |= w.dynamic_function;
    }
    Ok(out)
}

fn state(s: &Value, depth: usize) -> Result<Widths, AslError> {
    match s.get("Type").and_then(Value::as_str) {
        Some("Task") => Ok(task(s)),
        Some("Map") => map(s, depth),
        Some("Parallel") => {
            let branches = s
                .get("Branches")
                .and_then(Value::as_array)
                .ok_or(AslError::Shape("Parallel Branches"))?;
            let mut out = Widths::zero();
            for b in branches {
                let w = branch(b, depth + 1)?;
                out = add(&out, &w, 1.0);
            }
            Ok(out)
        }
        Some(_) => Ok(Widths::zero()),
        None => Err(AslError::Shape("state Type")),
    }
}

/// `a + times × b`, per function and in total.
fn add(a: &Widths, b: &Widths, times: f64) -> Widths {
    let mut out = a.clone();
    out.total = match (a.total, b.total) {
        (Some(x), Some(y)) => Some(x + times * y),
        _ => None,
    };
    for (f, n) in &b.per_function {
        *out.per_function.entry(f.clone()).or_insert(0.0) += times * n;
    }
    out.dynamic_function |= b.dynamic_function;
    out
}

fn map(s: &Value, depth: usize) -> Result<Widths, AslError> {
    let inner = s
        .get("ItemProcessor")
        .or_else(|| s.get("Iterator"))
        .ok_or(AslError::Shape("Map ItemProcessor"))?;
    let distributed = inner
        .pointer("/ProcessorConfig/Mode")
        .and_then(Value::as_str)
        .is_some_and(|m| m.eq_ignore_ascii_case("DISTRIBUTED"));
    let cap = if distributed {
        DISTRIBUTED_MAP_MAX
    } else {
        INLINE_MAP_MAX
    };
    // MaxConcurrencyPath is read at run time: only the cap is known.
    let mc = s
        .get("MaxConcurrency")
        .and_then(Value::as_f64)
        .filter(|n| *n >= 1.0)
        .map_or(cap, |n| n.min(cap));
    let w = branch(inner, depth + 1)?;
    let mut out = add(&Widths::zero(), &w, mc);
    if distributed && s.get("MaxConcurrency").is_none() {
        out.total = None;
    }
    Ok(out)
}

/// A Task: one Lambda of a known or dynamic function, or something else.
fn task(s: &Value) -> Widths {
    let resource = s.get("Resource").and_then(Value::as_str).unwrap_or("");
    let one = |name: String| Widths {
        total: Some(1.0),
        per_function: BTreeMap::from([(name, 1.0)]),
        dynamic_function: false,
    };
    if let Some(name) = function_name(resource) {
        return one(name);
    }
    if resource.starts_with("arn:aws:states:::lambda:invoke") {
        let args = s.get("Parameters").or_else(|| s.get("Arguments"));
        return match args
            .and_then(|a| a.get("FunctionName"))
            .and_then(Value::as_str)
        {
            // JSONata arguments are written as "{% ... %}".
            Some(f) if !f.starts_with("{%") => one(function_name(f).unwrap_or_else(|| f.into())),
            _ => Widths {
                total: Some(1.0),
                per_function: BTreeMap::new(),
                dynamic_function: true,
            },
        };
    }
    // Activities, SDK integrations and waits for callbacks run no Lambda of
    // the pipeline; a nested execution (states:startExecution) may run any.
    let nested = resource.starts_with("arn:aws:states:::states:startExecution");
    Widths {
        total: if nested { None } else { Some(0.0) },
        per_function: BTreeMap::new(),
        dynamic_function: nested,
    }
}

/// The function name in a Lambda ARN or partial ARN
/// (`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`,
/// `ACCOUNT:function:NAME`), or the text itself when it is a plain name.
pub fn function_name(s: &str) -> Option<String> {
    if let Some(i) = s.find("function:") {
        let rest = &s[i + "function:".len()..];
        let name = rest.split(':').next().unwrap_or("");
        return (!name.is_empty()).then(|| name.to_string());
    }
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    (plain && !s.starts_with("arn")).then(|| s.to_string())
}

#[cfg(test)]
mod tests;
