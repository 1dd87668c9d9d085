//! Execution names: a pure function of the message, so a redelivery, a
//! crash between start and delete, or a second controller can never start
//! the same work twice (Standard workflows refuse a reused name).

use std::fmt::Write as _;

/// Step Functions' limit on execution names.
pub const MAX_NAME_LEN: usize = 80;
/// Step Functions' limit on execution input (UTF-8 bytes).
pub const MAX_INPUT_BYTES: usize = 256 * 1024;

/// Why a naming template is refused; byte offsets are into the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` with no `}` after it.
    #[error("unclosed '{{' at byte {0}; write fields as {{name}}")]
    Unclosed(usize),
    /// `{}` with no field name.
    #[error("empty '{{}}' at byte {0}; name a field, e.g. {{company_id}}")]
    Empty(usize),
    /// A `}` with no `{` before it.
    #[error("stray '}}' at byte {0}")]
    Stray(usize),
    /// No part varies with the message, so every name would collide.
    #[error(
        "the template produces the same name for every message; include {{message_id}}, {{hash}} or a body field"
    )]
    Constant,
}

/// Why a message can never be started. The message goes to the DLQ with
/// this reason instead of being retried forever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unstartable {
    /// The body does not parse as JSON; the parser's message.
    #[error("body is not valid JSON ({0}); Step Functions input must be JSON")]
    NotJson(String),
    /// The body's size in bytes is over `MAX_INPUT_BYTES`.
    #[error("body is {0} bytes, over Step Functions' 262144-byte input limit")]
    TooLarge(usize),
    /// A field the template names is not a top-level field of the body.
    #[error("body has no top-level field \"{0}\" required by naming.template")]
    MissingField(String),
}

impl Unstartable {
    /// A stable short code, for metrics and the DLQ message attribute.
    pub fn code(&self) -> &'static str {
        match self {
            Unstartable::NotJson(_) => "not_json",
            Unstartable::TooLarge(_) => "too_large",
            Unstartable::MissingField(_) => "missing_field",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    MessageId,
    Hash,
    Field(String),
}

/// A parsed naming template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namer {
    parts: Vec<Part>,
}

impl Namer {
    /// Parse `template`: literal text and `{message_id}`, `{hash}` or
    /// `{field}` parts.
    pub fn new(template: &str) -> Result<Namer, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = template.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(TemplateError::Unclosed(i));
                    }
                    if name.is_empty() {
                        return Err(TemplateError::Empty(i));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(match name.as_str() {
                        "message_id" => Part::MessageId,
                        "hash" => Part::Hash,
                        _ => Part::Field(name),
                    });
                }
                '}' => return Err(TemplateError::Stray(i)),
                _ => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        if parts.iter().all(|p| matches!(p, Part::Literal(_))) {
            return Err(TemplateError::Constant);
        }
        Ok(Namer { parts })
    }

    /// Whether names depend on the message id: only then does a body sent
    /// again as a new message get a name of its own (a body's fields and
    /// hash render as before, and the old execution keeps the name).
    pub fn uses_message_id(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::MessageId))
    }

    fn needs_json(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }

    /// Check the body can ever start, then build its execution name.
    pub fn name(&self, message_id: &str, body: &str) -> Result<String, Unstartable> {
        if body.len() > MAX_INPUT_BYTES {
            return Err(Unstartable::TooLarge(body.len()));
        }
        let json: serde_json::Value =
            serde_json::from_str(body).map_err(|e| Unstartable::NotJson(e.to_string()))?;
        let mut raw = String::new();
        let mut empty_field = false;
        for part in &self.parts {
            match part {
                Part::Literal(s) => raw.push_str(s),
                Part::MessageId => raw.push_str(message_id),
                Part::Hash => raw.push_str(&short_hash(body)),
                Part::Field(f) => match json.get(f) {
                    Some(serde_json::Value::String(s)) => {
                        empty_field |= s.is_empty();
                        raw.push_str(s);
                    }
                    Some(serde_json::Value::Null) | None => {
                        return Err(Unstartable::MissingField(f.clone()));
                    }
                    Some(v) => {
                        let _ = write!(raw, "{v}");
                    }
                },
            }
        }
        debug_assert!(self.needs_json() || !raw.is_empty());
        if empty_field {
            // Every message with that field empty renders alike: tell
            // them apart by the body, which a re-sent copy shares.
            return Ok(fit(&raw, &format!("{raw}\u{0}{body}"), true));
        }
        Ok(sanitize(&raw))
    }
}

/// 12 hex characters of FNV-1a over the text: short, stable across
/// versions and platforms (unlike `DefaultHasher`).
pub fn short_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:012x}", h >> 16)
}

/// Keep `0-9 A-Z a-z - _` (what Step Functions and CloudWatch both accept),
/// map everything else to '-', and fit 80 characters. A name that had to
/// change ends in a hash of the raw one, so `acme/eu`, `acme.eu` and
/// `acme eu` (or two long names) stay three names: a shared name would
/// make the second message look already started.
pub fn sanitize(raw: &str) -> String {
    fit(raw, raw, false)
}

/// `raw` as a valid name; `key` (what the name must tell apart) is hashed
/// onto it when `raw` had to change or `force_hash` is set.
fn fit(raw: &str, key: &str, force_hash: bool) -> String {
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !force_hash && clean == raw && clean.len() <= MAX_NAME_LEN {
        return clean;
    }
    let suffix = short_hash(key);
    if clean.is_empty() {
        return suffix;
    }
    let keep = clean.len().min(MAX_NAME_LEN - suffix.len() - 1);
    format!("{}-{}", &clean[..keep], suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_template_is_the_message_id() {
        let n = Namer::new("{message_id}").unwrap();
        assert_eq!(
            n.name("0f8a-11", r#"{"company_id":"c1"}"#).unwrap(),
            "0f8a-11"
        );
    }

    #[test]
    fn field_and_hash_template() {
        let n = Namer::new("co-{company_id}-{hash}").unwrap();
        let a = n.name("m1", r#"{"company_id":"acme/eu"}"#).unwrap();
        let b = n.name("m2", r#"{"company_id":"acme/eu"}"#).unwrap();
        // Same body, same name, whatever the message id: a re-sent copy
        // cannot start the company twice.
        assert_eq!(a, b);
        assert!(a.starts_with("co-acme-eu-"), "{a}");
        let c = n.name("m1", r#"{"company_id":"acme/eu","v":2}"#).unwrap();
        assert_ne!(a, c, "a changed body is new work");
        let num = n.name("m1", r#"{"company_id":42}"#).unwrap();
        assert!(num.starts_with("co-42-"), "{num}");
    }

    #[test]
    fn unstartable_bodies_say_why() {
        let n = Namer::new("{company_id}").unwrap();
        assert!(matches!(
            n.name("m", "not json"),
            Err(Unstartable::NotJson(_))
        ));
        assert_eq!(
            n.name("m", r#"{"other":1}"#),
            Err(Unstartable::MissingField("company_id".into()))
        );
        let big = format!(
            r#"{{"company_id":"x","pad":"{}"}}"#,
            "a".repeat(MAX_INPUT_BYTES)
        );
        assert!(matches!(n.name("m", &big), Err(Unstartable::TooLarge(_))));
        // The default template still refuses non-JSON: it could never start.
        let d = Namer::new("{message_id}").unwrap();
        assert!(matches!(d.name("m", "{oops"), Err(Unstartable::NotJson(_))));
    }

    #[test]
    fn long_names_are_cut_to_80_and_stay_distinct() {
        let a = sanitize(&"x".repeat(200));
        let b = sanitize(&format!("{}y", "x".repeat(199)));
        assert_eq!(a.len(), MAX_NAME_LEN);
        assert_eq!(b.len(), MAX_NAME_LEN);
        assert_ne!(a, b);
    }

    #[test]
    fn names_that_sanitize_alike_stay_distinct() {
        let n = Namer::new("{company_id}").unwrap();
        let name = |id: &str| n.name("m", &format!(r#"{{"company_id":"{id}"}}"#)).unwrap();
        let names: Vec<String> = ["acme/eu", "acme.eu", "acme eu", "acme-eu"]
            .iter()
            .map(|id| name(id))
            .collect();
        for (i, a) in names.iter().enumerate() {
            assert!(a.len() <= MAX_NAME_LEN, "{a}");
            assert!(
                a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            );
            for b in &names[i + 1..] {
                assert_ne!(a, b, "two companies, one execution name");
            }
        }
        assert_eq!(names[3], "acme-eu", "a name already clean is unchanged");
        assert!(
            names[0].starts_with("acme-eu-"),
            "still readable: {}",
            names[0]
        );
        assert_eq!(name("acme/eu"), names[0], "deterministic");
        let long = name(&format!("{}/x", "a".repeat(100)));
        let long2 = name(&format!("{}.x", "a".repeat(100)));
        assert_eq!((long.len(), long2.len()), (MAX_NAME_LEN, MAX_NAME_LEN));
        assert_ne!(long, long2);
        // An empty field names the body, not nothing: two companies sent
        // without an id are two executions, a re-sent copy the same one.
        let a = n.name("m1", r#"{"company_id":"","v":1}"#).unwrap();
        let b = n.name("m2", r#"{"company_id":"","v":2}"#).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, n.name("m3", r#"{"company_id":"","v":1}"#).unwrap());
        let p = Namer::new("co-{company_id}").unwrap();
        assert_ne!(
            p.name("m", r#"{"company_id":"","v":1}"#).unwrap(),
            p.name("m", r#"{"company_id":"","v":2}"#).unwrap()
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        assert_eq!(Namer::new("{abc"), Err(TemplateError::Unclosed(0)));
        assert_eq!(Namer::new("a{}"), Err(TemplateError::Empty(1)));
        assert_eq!(Namer::new("a}"), Err(TemplateError::Stray(1)));
        assert_eq!(Namer::new("fixed"), Err(TemplateError::Constant));
    }

    #[test]
    fn hash_is_stable() {
        // Changing this breaks idempotency across versions: names of
        // messages already started would differ after an upgrade.
        assert_eq!(short_hash("hello"), "a430d84680aa");
    }
}
