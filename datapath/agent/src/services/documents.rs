//! One file -> its YAML documents -> `Service` and `EndpointSlice` objects, each with the
//! file and line it came from.
//!
//! Documents are split at their `---` markers before parsing, so a broken document costs
//! only itself: the documents after it in the same file are still read. Error locations
//! from the parser are relative to the document and are moved back to file lines here.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::Resource;

use super::Problems;

/// An object and where its document starts (first line that is not blank or a comment).
#[derive(Debug, Clone)]
pub(super) struct Located<T> {
    pub file: PathBuf,
    pub line: usize,
    pub obj: T,
}

/// Everything read from the directory, in file order then document order.
#[derive(Debug, Default)]
pub(super) struct Objects {
    pub services: Vec<Located<Service>>,
    pub slices: Vec<Located<EndpointSlice>>,
}

/// One document of a file.
#[derive(Debug, PartialEq, Eq)]
struct Document {
    /// 1-based file line of the document's first text line.
    start: usize,
    /// 1-based file line of its first line with content; None for an empty document.
    content: Option<usize>,
    text: String,
}

impl Document {
    /// The file line of the document's `line` (1-based, as the parser counts).
    fn file_line(&self, line: usize) -> usize {
        self.start + line.saturating_sub(1)
    }
}

/// `---` (directives end) or `...` (document end), alone or followed by blanks or content.
fn marker(line: &str, mark: &str) -> Option<usize> {
    let rest = line.strip_prefix(mark)?;
    (rest.is_empty() || rest.starts_with([' ', '\t'])).then_some(mark.len())
}

/// Splits a file at its document markers. Content on a `---` line (`--- # c`, `--- {a: 1}`)
/// stays in the document it starts, with the marker blanked so columns are unchanged.
fn split(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut cur = Document {
        start: 1,
        content: None,
        text: String::new(),
    };
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let mut line = raw.to_owned();
        if let Some(n) = marker(raw, "---") {
            docs.push(std::mem::replace(
                &mut cur,
                Document {
                    start: line_no,
                    content: None,
                    text: String::new(),
                },
            ));
            line.replace_range(..n, &" ".repeat(n));
        } else if marker(raw, "...").is_some() {
            docs.push(std::mem::replace(
                &mut cur,
                Document {
                    start: line_no + 1,
                    content: None,
                    text: String::new(),
                },
            ));
            continue;
        }
        let trimmed = line.trim_start();
        if cur.content.is_none() && !trimmed.is_empty() && !trimmed.starts_with('#') {
            cur.content = Some(line_no);
        }
        cur.text.push_str(&line);
        cur.text.push('\n');
    }
    docs.push(cur);
    docs.retain(|d| d.content.is_some());
    docs
}

/// Reads every document of one file into `objects`; what cannot be read goes to `problems`.
pub(super) fn parse_file(file: &Path, text: &str, objects: &mut Objects, problems: &mut Problems) {
    for doc in split(text) {
        parse_document(file, &doc, objects, problems);
    }
}

fn parse_document(file: &Path, doc: &Document, objects: &mut Objects, problems: &mut Problems) {
    let line = doc.content.unwrap_or(doc.start);
    let value: serde_yaml::Value = match serde_yaml::from_str(&doc.text) {
        Ok(v) => v,
        Err(e) => {
            let (at, reason) = locate(&e, doc);
            problems.push(file, at.unwrap_or(line), format!("invalid YAML: {reason}"));
            return;
        }
    };
    let map = match value {
        serde_yaml::Value::Null => return,
        serde_yaml::Value::Mapping(map) => map,
        other => {
            let found = match other {
                serde_yaml::Value::Sequence(_) => "a sequence",
                serde_yaml::Value::Tagged(_) => "a tagged value",
                _ => "a scalar",
            };
            problems.push(
                file,
                line,
                format!("not a Kubernetes object: expected a mapping with apiVersion and kind, found {found}"),
            );
            return;
        }
    };
    let field = |key: &str| {
        map.get(key)
            .and_then(serde_yaml::Value::as_str)
            .map(str::to_owned)
    };
    let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
        problems.push(
            file,
            line,
            "not a Kubernetes object: apiVersion and kind must be strings".to_owned(),
        );
        return;
    };
    match kind.as_str() {
        "Service" => {
            if let Some(obj) = typed::<Service>(file, doc, &api_version, problems) {
                objects.services.push(Located { file: file.to_owned(), line, obj });
            }
        }
        "EndpointSlice" => {
            if let Some(obj) = typed::<EndpointSlice>(file, doc, &api_version, problems) {
                objects.slices.push(Located { file: file.to_owned(), line, obj });
            }
        }
        _ => problems.push(
            file,
            line,
            format!("ignored: kind {kind} (apiVersion {api_version}) is neither a Service nor an EndpointSlice"),
        ),
    }
}

/// Parses a document as `T`, whose kind it declared, checking its apiVersion first.
fn typed<T>(file: &Path, doc: &Document, api_version: &str, problems: &mut Problems) -> Option<T>
where
    T: Resource + serde::de::DeserializeOwned,
{
    let line = doc.content.unwrap_or(doc.start);
    if api_version != T::API_VERSION {
        problems.push(
            file,
            line,
            format!(
                "{} has apiVersion {api_version:?}; expected {:?}",
                T::KIND,
                T::API_VERSION
            ),
        );
        return None;
    }
    match serde_yaml::from_str::<T>(&doc.text) {
        Ok(obj) => Some(obj),
        Err(e) => {
            let (at, reason) = locate(&e, doc);
            problems.push(
                file,
                at.unwrap_or(line),
                format!("invalid {}: {reason}", T::KIND),
            );
            None
        }
    }
}

/// The file line of a parse error and its message with locations in file terms. The primary
/// location becomes the problem's line, so the message keeps only its column.
fn locate(e: &serde_yaml::Error, doc: &Document) -> (Option<usize>, String) {
    let mut msg = e.to_string();
    let Some(loc) = e.location() else {
        return (None, msg);
    };
    let primary = format!(" at line {} column {}", loc.line(), loc.column());
    if let Some(i) = msg.find(&primary) {
        msg.replace_range(
            i..i + primary.len(),
            &format!(" at column {}", loc.column()),
        );
    }
    (Some(doc.file_line(loc.line())), shift_lines(&msg, doc))
}

/// Rewrites every parser location `line N column M` in a message to the file's line number
/// (text quoted from the document, which has no ` column` after its number, is left alone).
fn shift_lines(msg: &str, doc: &Document) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("line ") {
        let (head, tail) = rest.split_at(i + "line ".len());
        out.push_str(head);
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        match tail[..digits].parse::<usize>() {
            Ok(n) if tail[digits..].starts_with(" column ") => {
                out.push_str(&doc.file_line(n).to_string())
            }
            _ => out.push_str(&tail[..digits]),
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(text: &str) -> Vec<(usize, Option<usize>)> {
        split(text).iter().map(|d| (d.start, d.content)).collect()
    }

    #[test]
    fn split_at_markers() {
        assert_eq!(
            starts("a: 1\n---\nb: 2\n"),
            vec![(1, Some(1)), (2, Some(3))]
        );
        assert_eq!(
            starts("---\na: 1\n---\n\n# c\nb: 2\n---\n"),
            vec![(1, Some(2)), (3, Some(6))]
        );
        assert_eq!(starts("# only a comment\n"), vec![]);
        assert_eq!(starts(""), vec![]);
        // `----` and an indented `---` are content, not markers.
        assert_eq!(starts("a: |\n  ---\n----: 1\n"), vec![(1, Some(1))]);
        // Content on the marker line belongs to the new document.
        let docs = split("a: 1\n--- {b: 2}\n");
        assert_eq!(docs[1].text, "    {b: 2}\n");
        assert_eq!((docs[1].start, docs[1].content), (2, Some(2)));
        // `...` ends a document.
        assert_eq!(
            starts("a: 1\n...\nb: 2\n"),
            vec![(1, Some(1)), (3, Some(3))]
        );
    }

    #[test]
    fn messages_speak_in_file_lines() {
        let doc = Document {
            start: 11,
            content: Some(11),
            text: String::new(),
        };
        assert_eq!(
            shift_lines(
                "did not find ',' at column 1, while parsing a flow mapping at line 5 column 7",
                &doc
            ),
            "did not find ',' at column 1, while parsing a flow mapping at line 15 column 7"
        );
        for unchanged in [
            "no line here, or a line without a number",
            "invalid value: string \"line 5\"",
        ] {
            assert_eq!(shift_lines(unchanged, &doc), unchanged);
        }
    }
}
