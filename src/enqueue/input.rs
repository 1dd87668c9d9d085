//! The file of `fanout enqueue --file`, CSV or JSON lines, read one line
//! (CSV record) at a time with its length capped: a bad line is a
//! `LineProblem` with its number and the rest of the file is still sent;
//! only a file that cannot be read at all, or a bad CSV header, refuses
//! the whole file.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use csv_core::ReadRecordResult;
use serde_json::{Map, Value};

use super::{Body, EnqueueError, LineProblem};
use crate::control::naming::MAX_INPUT_BYTES;

/// The longest line (CSV record) kept: SQS and Step Functions take at most
/// 256 KiB per message and a body is never shorter than its line. The rest
/// of a longer line is skipped without being held in memory.
pub const MAX_LINE_BYTES: usize = MAX_INPUT_BYTES;

/// A UTF-8 byte order mark, which some editors put before the first line.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// Why a whole input file is refused (a bad line only refuses that line).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Opening or reading the file failed.
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
    /// The CSV file is empty.
    #[error("no header row; the first line names the columns, one of them company_id")]
    NoHeader,
    /// The CSV header row is over `MAX_LINE_BYTES`.
    #[error("the header row is over {MAX_LINE_BYTES} bytes; is this a CSV file?")]
    HeaderTooLong,
    /// The CSV header row is not UTF-8.
    #[error("the header row is not valid UTF-8; save the file as UTF-8")]
    HeaderNotUtf8,
    /// No column is called `company_id`.
    #[error("the header row has no company_id column; name the id column company_id")]
    NoCompanyId,
    /// Two columns have the same name (each column is a body field).
    #[error(
        "header \"{name}\" appears twice (columns {first} and {second}); rename or remove one, or the second would silently replace the first in every body"
    )]
    DuplicateHeader {
        /// The header.
        name: String,
        /// Its first column, from 1.
        first: usize,
        /// Its second column, from 1.
        second: usize,
    },
}

/// Parse a CSV (header row with `company_id`; other columns become string
/// fields) or JSON-lines file (one object with `company_id` per line).
pub fn read_file(path: &Path) -> Result<(Vec<Body>, Vec<LineProblem>), EnqueueError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let input_err = |problem: InputError| EnqueueError::Input {
        path: path.to_path_buf(),
        problem,
    };
    let open = || {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| input_err(e.into()))
    };
    match ext.as_str() {
        "csv" => parse_csv(open()?).map_err(input_err),
        "jsonl" | "ndjson" => parse_jsonl(open()?).map_err(|e| input_err(e.into())),
        _ => Err(EnqueueError::FileType {
            path: path.to_path_buf(),
        }),
    }
}

pub(super) fn id_ok(v: &Value) -> bool {
    match v {
        Value::String(s) => !s.trim().is_empty(),
        Value::Number(_) => true,
        _ => false,
    }
}

fn too_long(line: u64, what: &str, bytes: usize) -> LineProblem {
    LineProblem {
        line,
        reason: format!(
            "the {what} is {bytes} bytes, over the {MAX_LINE_BYTES}-byte limit of an SQS message; split the record or drop fields"
        ),
    }
}

/// The next line of `r` into `buf` without its `\n`, at most `cap` bytes of
/// it; returns the line's whole length, None at the end of the input.
fn read_line_capped(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    cap: usize,
) -> io::Result<Option<usize>> {
    buf.clear();
    let mut len = 0;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok((len > 0).then_some(len));
        }
        let newline = chunk.iter().position(|&b| b == b'\n');
        let part = &chunk[..newline.unwrap_or(chunk.len())];
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&part[..part.len().min(room)]);
        len += part.len();
        let used = newline.map_or(chunk.len(), |i| i + 1);
        r.consume(used);
        if newline.is_some() {
            // An empty last line still counts, as a line of 0 bytes.
            return Ok(Some(len));
        }
    }
}

/// Bodies and refused lines of a JSON-lines input; blank lines are skipped.
pub fn parse_jsonl(mut r: impl BufRead) -> io::Result<(Vec<Body>, Vec<LineProblem>)> {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0;
    // Room for a BOM and a `\r` beside the longest line kept.
    let cap = MAX_LINE_BYTES + BOM.len() + 1;
    while let Some(len) = read_line_capped(&mut r, &mut buf, cap)? {
        line += 1;
        let mut raw = buf.as_slice();
        if line == 1 {
            raw = raw.strip_prefix(BOM).unwrap_or(raw);
        }
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if len > cap || raw.len() > MAX_LINE_BYTES {
            bad.push(too_long(line, "line", len));
            continue;
        }
        let text = match std::str::from_utf8(raw) {
            Ok(text) => text,
            Err(e) => {
                bad.push(LineProblem {
                    line,
                    reason: format!(
                        "not valid UTF-8 (byte {}); save the file as UTF-8",
                        e.valid_up_to() + 1
                    ),
                });
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) if m.get("company_id").is_some_and(id_ok) => ok.push(Body {
                line,
                text: Value::Object(m).to_string(),
            }),
            Ok(Value::Object(_)) => bad.push(LineProblem {
                line,
                reason: "no company_id (a non-empty string or a number)".into(),
            }),
            Ok(_) => bad.push(LineProblem {
                line,
                reason: "not a JSON object; write one object per line".into(),
            }),
            Err(e) => bad.push(LineProblem {
                line,
                reason: format!("not JSON: {e}"),
            }),
        }
    }
    Ok((ok, bad))
}

/// Bodies and refused rows of a CSV input: a header row with `company_id`,
/// other columns become string fields.
pub fn parse_csv(r: impl BufRead) -> Result<(Vec<Body>, Vec<LineProblem>), InputError> {
    let mut records = CsvRecords::new(skip_bom(r)?);
    let Some(head) = records.next()? else {
        return Err(InputError::NoHeader);
    };
    if head.over {
        return Err(InputError::HeaderTooLong);
    }
    let headers = records
        .fields()
        .map(|f| std::str::from_utf8(f).map(str::to_string))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|_| InputError::HeaderNotUtf8)?;
    for (second, name) in headers.iter().enumerate() {
        if let Some(first) = headers[..second].iter().position(|h| h == name) {
            return Err(InputError::DuplicateHeader {
                name: name.clone(),
                first: first + 1,
                second: second + 1,
            });
        }
    }
    if !headers.iter().any(|h| h == "company_id") {
        return Err(InputError::NoCompanyId);
    }
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    while let Some(rec) = records.next()? {
        match csv_body(&headers, &rec, records.fields()) {
            Ok(text) => ok.push(Body {
                line: rec.line,
                text,
            }),
            Err(reason) => bad.push(LineProblem {
                line: rec.line,
                reason,
            }),
        }
    }
    Ok((ok, bad))
}

/// The input without a leading BOM. csv-core drops one itself only when
/// its first read holds all of it, and a read of nothing else then looks
/// like the end of the input to it.
fn skip_bom<R: BufRead>(mut r: R) -> io::Result<io::Chain<io::Cursor<Vec<u8>>, R>> {
    let mut head = Vec::with_capacity(BOM.len());
    (&mut r).take(BOM.len() as u64).read_to_end(&mut head)?;
    if head == BOM {
        head.clear();
    }
    Ok(io::Cursor::new(head).chain(r))
}

/// The body of one CSV row, or why it is refused.
fn csv_body<'a>(
    headers: &[String],
    rec: &Record,
    fields: impl ExactSizeIterator<Item = &'a [u8]>,
) -> Result<String, String> {
    if rec.over {
        return Err(too_long(rec.line, "row", rec.bytes).reason);
    }
    if fields.len() != headers.len() {
        let n = fields.len();
        return Err(format!(
            "{n} field{}, the header has {}; quote values that contain a comma, or fix the row",
            if n == 1 { "" } else { "s" },
            headers.len()
        ));
    }
    let mut obj = Map::new();
    for (h, v) in headers.iter().zip(fields) {
        let Ok(v) = std::str::from_utf8(v) else {
            return Err(format!(
                "column {h} is not valid UTF-8; save the file as UTF-8"
            ));
        };
        obj.insert(h.clone(), Value::String(v.to_string()));
    }
    if !obj.get("company_id").is_some_and(id_ok) {
        return Err("empty company_id".into());
    }
    Ok(Value::Object(obj).to_string())
}

/// Where a CSV record starts, how long it is, and whether it was over
/// `MAX_LINE_BYTES` (then it has no fields).
struct Record {
    line: u64,
    bytes: usize,
    over: bool,
}

/// CSV records read with csv-core, whose buffers are ours to cap: the csv
/// crate would hold a record of any length in memory.
struct CsvRecords<R> {
    input: R,
    core: csv_core::Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
    fields: usize,
    /// Line feeds read so far.
    newlines: u64,
}

impl<R: BufRead> CsvRecords<R> {
    fn new(input: R) -> Self {
        CsvRecords {
            input,
            core: csv_core::Reader::new(),
            out: vec![0; 4096],
            ends: vec![0; 64],
            fields: 0,
            newlines: 0,
        }
    }

    /// The next record, None at the end; its fields are `fields()`.
    fn next(&mut self) -> io::Result<Option<Record>> {
        let (mut nout, mut nend, mut bytes) = (0, 0, 0);
        // The line of the record's first byte: blank lines and the `\n` of
        // a `\r\n` are skipped before it.
        let mut line = None;
        loop {
            let input = self.input.fill_buf()?;
            let (res, nin, o, e) =
                self.core
                    .read_record(input, &mut self.out[nout..], &mut self.ends[nend..]);
            for &b in &input[..nin] {
                if line.is_none() && b != b'\n' && b != b'\r' {
                    line = Some(self.newlines + 1);
                }
                self.newlines += u64::from(b == b'\n');
            }
            self.input.consume(nin);
            (nout, nend, bytes) = (nout + o, nend + e, bytes + nin);
            let over = bytes > MAX_LINE_BYTES;
            match res {
                ReadRecordResult::InputEmpty => {}
                // Over the cap, the rest of the record is parsed and dropped.
                ReadRecordResult::OutputFull if over => nout = 0,
                ReadRecordResult::OutputFull => self.out.resize(self.out.len() * 2, 0),
                ReadRecordResult::OutputEndsFull if over => nend = 0,
                ReadRecordResult::OutputEndsFull => self.ends.resize(self.ends.len() * 2, 0),
                ReadRecordResult::Record => {
                    self.fields = if over { 0 } else { nend };
                    return Ok(Some(Record {
                        line: line.unwrap_or(self.newlines + 1),
                        bytes,
                        over,
                    }));
                }
                ReadRecordResult::End => return Ok(None),
            }
        }
    }

    /// The fields of the record last read.
    fn fields(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        let ends = &self.ends[..self.fields];
        (0..ends.len()).map(move |i| {
            let start = if i == 0 { 0 } else { ends[i - 1] };
            &self.out[start..ends[i]]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_reports_bad_lines_with_numbers() {
        let text = "{\"company_id\":\"a\"}\n\nnot json\n[1]\n{\"x\":1}\n{\"company_id\":7}\n";
        let (ok, bad) = parse_jsonl(text.as_bytes()).unwrap();
        assert_eq!(ok.iter().map(|b| b.line).collect::<Vec<_>>(), [1, 6]);
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [3, 4, 5]);
    }

    /// `read_file` on a file called `name` holding `bytes`.
    fn read(name: &str, bytes: &[u8]) -> Result<(Vec<Body>, Vec<LineProblem>), EnqueueError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        read_file(&path)
    }

    fn lines_of(bodies: &[Body]) -> Vec<u64> {
        bodies.iter().map(|b| b.line).collect()
    }

    fn problem_lines(bad: &[LineProblem]) -> Vec<u64> {
        bad.iter().map(|p| p.line).collect()
    }

    fn field(b: &Body, name: &str) -> Value {
        serde_json::from_str::<Value>(&b.text).unwrap()[name].clone()
    }

    #[test]
    fn a_bom_is_not_part_of_the_first_line_or_header() {
        let (ok, bad) = read(
            "a.jsonl",
            "\u{feff}{\"company_id\":\"a\"}\n{\"company_id\":\"b\"}\n".as_bytes(),
        )
        .unwrap();
        assert_eq!((lines_of(&ok), bad), (vec![1, 2], vec![]));
        let (ok, bad) = read("a.csv", "\u{feff}company_id,region\na,eu\n".as_bytes()).unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(field(&ok[0], "company_id"), "a");
        assert_eq!(ok[0].text, r#"{"company_id":"a","region":"eu"}"#);
    }

    #[test]
    fn duplicate_csv_headers_refuse_the_file_naming_the_header() {
        let e = read("a.csv", b"company_id,region,region\na,eu,us\n").unwrap_err();
        // As `fanout enqueue` prints it: the error and its sources.
        let msg = format!("{:#}", anyhow::Error::from(e));
        assert!(
            msg.contains("a.csv") && msg.contains("\"region\"") && msg.contains("twice"),
            "{msg}"
        );
        assert_eq!(msg.matches("twice").count(), 1, "{msg}");
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let (ok, bad) = read(
            "a.jsonl",
            b"{\"company_id\":\"a\"}\r\n{\"company_id\":\"b\"}\r\n",
        )
        .unwrap();
        assert_eq!((lines_of(&ok), bad), (vec![1, 2], vec![]));
        let (ok, bad) = read("a.csv", b"company_id,region\r\na,eu\r\nb,us\r\n").unwrap();
        assert_eq!((lines_of(&ok), bad), (vec![2, 3], vec![]));
        assert_eq!(field(&ok[0], "region"), "eu");
        assert_eq!(field(&ok[1], "region"), "us");
    }

    #[test]
    fn a_line_of_invalid_utf8_is_refused_and_the_others_kept() {
        let (ok, bad) = read(
            "a.jsonl",
            b"{\"company_id\":\"a\"}\n{\"company_id\":\"\xff\"}\n{\"company_id\":\"c\"}\n",
        )
        .unwrap();
        assert_eq!((lines_of(&ok), problem_lines(&bad)), (vec![1, 3], vec![2]));
        assert!(bad[0].reason.contains("UTF-8"), "{}", bad[0].reason);
        let (ok, bad) = read("a.csv", b"company_id,region\na,eu\nb,\xff\nc,us\n").unwrap();
        assert_eq!((lines_of(&ok), problem_lines(&bad)), (vec![2, 4], vec![3]));
        assert!(bad[0].reason.contains("UTF-8"), "{}", bad[0].reason);
    }

    #[test]
    fn csv_rows_with_the_wrong_number_of_fields_are_refused_and_the_others_kept() {
        let (ok, bad) = read("a.csv", b"company_id,region\na,eu\nb\nc,us,x\nd,de\n").unwrap();
        assert_eq!(
            (lines_of(&ok), problem_lines(&bad)),
            (vec![2, 5], vec![3, 4])
        );
        assert!(
            bad[0].reason.contains("1 field") && bad[0].reason.contains("header has 2"),
            "{}",
            bad[0].reason
        );
        assert!(bad[1].reason.contains("3 fields"), "{}", bad[1].reason);
    }

    #[test]
    fn a_10_mb_line_is_refused_and_the_others_kept() {
        let big = "x".repeat(10 << 20);
        let jsonl = format!(
            "{{\"company_id\":\"a\"}}\n{{\"company_id\":\"b\",\"pad\":\"{big}\"}}\n{{\"company_id\":\"c\"}}\n"
        );
        let csv = format!("company_id,pad\na,\nb,{big}\nc,\n");
        for (name, text, ok_lines, big_line) in [
            ("a.jsonl", jsonl, vec![1, 3], 2),
            ("a.csv", csv, vec![2, 4], 3),
        ] {
            let (ok, bad) = read(name, text.as_bytes()).unwrap();
            assert_eq!(
                (lines_of(&ok), problem_lines(&bad)),
                (ok_lines, vec![big_line]),
                "{name}"
            );
            assert!(
                bad[0].reason.contains("262144") && bad[0].reason.contains("split"),
                "{name}: {}",
                bad[0].reason
            );
        }
    }

    #[test]
    fn csv_rows_are_numbered_by_their_first_line() {
        let text = b"company_id,note\r\n\r\na,\"two\r\nlines\"\r\nb,x\r\n\r\n,y\r\n";
        let (ok, bad) = parse_csv(&text[..]).unwrap();
        assert_eq!((lines_of(&ok), problem_lines(&bad)), (vec![3, 5], vec![7]));
        assert_eq!(field(&ok[0], "note"), "two\r\nlines");
    }

    #[test]
    fn reads_split_anywhere_give_the_same_result() {
        let big = "x".repeat(MAX_LINE_BYTES + 10);
        let jsonl = format!(
            "\u{feff}{{\"company_id\":\"a\"}}\r\n{{\"company_id\":\"{big}\"}}\n\n{{\"company_id\":\"c\"}}"
        );
        let csv = format!("\u{feff}company_id,n\r\na,1\r\n{big},2\r\nc,\"3\"");
        let whole = (
            parse_jsonl(jsonl.as_bytes()).unwrap(),
            parse_csv(csv.as_bytes()).unwrap(),
        );
        assert_eq!(lines_of(&whole.0.0), [1, 4]);
        assert_eq!(problem_lines(&whole.0.1), [2]);
        assert_eq!(lines_of(&whole.1.0), [2, 4]);
        assert_eq!(problem_lines(&whole.1.1), [3]);
        for capacity in [1, 2, 3, 7] {
            let split = (
                parse_jsonl(BufReader::with_capacity(capacity, jsonl.as_bytes())).unwrap(),
                parse_csv(BufReader::with_capacity(capacity, csv.as_bytes())).unwrap(),
            );
            assert_eq!(split, whole, "reads of {capacity} bytes");
        }
    }
}
