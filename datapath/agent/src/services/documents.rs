//! One file -> its documents -> `Service` and `EndpointSlice` objects, each with the place
//! (file, line, document, list item) it came from.
//!
//! What is read is what Kubernetes and kubectl print:
//!
//! | document | read as |
//! | --- | --- |
//! | `v1` `Service`, `discovery.k8s.io/v1` `EndpointSlice` | that object |
//! | `v1` `List` (`kubectl get svc,endpointslices -A -o yaml` or `-o json`) | each of its `items`, by the item's own `apiVersion` and `kind` |
//! | `v1` `ServiceList`, `discovery.k8s.io/v1` `EndpointSliceList` (the API's own lists) | each item as that kind (items there carry no `apiVersion`/`kind`) |
//! | any other kind, or an item of another kind | skipped, with one note per document |
//!
//! JSON is valid YAML, so `.json` files go through the same parser. Fields the server adds
//! (`metadata.managedFields`, `uid`, `resourceVersion`, `creationTimestamp`, `status`, ...)
//! are parsed by k8s-openapi's types and not used.
//!
//! Documents are split at their `---` markers before parsing, so a broken document costs
//! only itself, and a broken list item only itself. Error locations from the parser are
//! relative to the document and are moved back to file lines here.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::Resource;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

use super::{Place, Problems};

/// An object and where it was defined (for a list item: the document's first line, or
/// the line of its error).
#[derive(Debug, Clone)]
pub(super) struct Located<T> {
    pub at: Place,
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

/// Splits a file at its document markers (empty documents included: see the end). Content on a `---` line (`--- # c`, `--- {a: 1}`)
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
    // What precedes the first marker is a document only if it has content; after a marker,
    // even an empty document counts, so that document numbers match the file's `---`s.
    if docs.first().is_some_and(|d| d.content.is_none()) {
        docs.remove(0);
    }
    docs
}

/// Reads every document of one file into `objects`; what cannot be read goes to `problems`.
pub(super) fn parse_file(file: &Path, text: &str, objects: &mut Objects, problems: &mut Problems) {
    for (i, doc) in split(text).iter().enumerate() {
        if doc.content.is_none() {
            continue;
        }
        let at = Place {
            file: file.to_owned(),
            line: doc.content.unwrap_or(doc.start),
            document: i + 1,
            item: None,
        };
        parse_document(&at, doc, objects, problems);
    }
}

/// The kinds read here; any other kind is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Service,
    EndpointSlice,
}

impl Kind {
    fn of(kind: &str) -> Option<Kind> {
        match kind {
            "Service" => Some(Kind::Service),
            "EndpointSlice" => Some(Kind::EndpointSlice),
            _ => None,
        }
    }
}

/// The lists read here: `v1` `List` (items of any kind, each saying which), or a list whose
/// items are all of one kind.
fn list_kind(api_version: &str, kind: &str) -> Option<Option<Kind>> {
    match (api_version, kind) {
        ("v1", "List") => Some(None),
        (v, "ServiceList") if v == Service::API_VERSION => Some(Some(Kind::Service)),
        (v, "EndpointSliceList") if v == EndpointSlice::API_VERSION => {
            Some(Some(Kind::EndpointSlice))
        }
        _ => None,
    }
}

/// Objects of other kinds seen in one document, for its one note.
#[derive(Debug, Default)]
struct Skipped(BTreeMap<String, usize>);

impl Skipped {
    fn add(&mut self, api_version: &str, kind: &str) {
        *self.0.entry(format!("{kind} ({api_version})")).or_default() += 1;
    }

    fn note(self, at: &Place, problems: &mut Problems) {
        if self.0.is_empty() {
            return;
        }
        let n: usize = self.0.values().sum();
        let kinds: Vec<String> = self
            .0
            .into_iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        problems.note(
            at,
            format!(
                "skipped {n} object(s) that are neither a Service nor an EndpointSlice: {}",
                kinds.join(", ")
            ),
        );
    }
}

fn parse_document(at: &Place, doc: &Document, objects: &mut Objects, problems: &mut Problems) {
    let value: serde_yaml::Value = match serde_yaml::from_str(&doc.text) {
        Ok(v) => v,
        Err(e) => {
            let (line, reason) = locate(&e, doc);
            problems.error(
                &at.at_line(line.unwrap_or(at.line)),
                format!("invalid YAML: {reason}"),
            );
            return;
        }
    };
    if value.is_null() {
        return;
    }
    let (api_version, kind) = match header(&value) {
        Ok(h) => h,
        Err(reason) => {
            problems.error(at, reason);
            return;
        }
    };
    let mut skipped = Skipped::default();
    if let Some(item_kind) = list_kind(&api_version, &kind) {
        parse_list(at, doc, value, item_kind, objects, &mut skipped, problems);
    } else if let Some(k) = Kind::of(&kind) {
        match k {
            Kind::Service => {
                if let Some(obj) = typed::<Service>(at, doc, &api_version, problems) {
                    objects.services.push(Located {
                        at: at.clone(),
                        obj,
                    });
                }
            }
            Kind::EndpointSlice => {
                if let Some(obj) = typed::<EndpointSlice>(at, doc, &api_version, problems) {
                    objects.slices.push(Located {
                        at: at.clone(),
                        obj,
                    });
                }
            }
        }
    } else {
        skipped.add(&api_version, &kind);
    }
    skipped.note(at, problems);
}

/// `apiVersion` and `kind` of an object, or why it is not one.
fn header(value: &serde_yaml::Value) -> Result<(String, String), String> {
    let map = match value {
        serde_yaml::Value::Mapping(map) => map,
        other => {
            let found = match other {
                serde_yaml::Value::Sequence(_) => "a sequence",
                serde_yaml::Value::Tagged(_) => "a tagged value",
                _ => "a scalar",
            };
            return Err(format!(
                "not a Kubernetes object: expected a mapping with apiVersion and kind, found {found}"
            ));
        }
    };
    let field = |key: &str| {
        map.get(key)
            .and_then(serde_yaml::Value::as_str)
            .map(str::to_owned)
    };
    match (field("apiVersion"), field("kind")) {
        (Some(v), Some(k)) => Ok((v, k)),
        _ => Err("not a Kubernetes object: apiVersion and kind must be strings".to_owned()),
    }
}

/// The items of a list document. `item_kind` is the kind of every item (typed lists, whose
/// items need not say it), or None for `kind: List`, whose items each say what they are.
fn parse_list(
    at: &Place,
    doc: &Document,
    value: serde_yaml::Value,
    item_kind: Option<Kind>,
    objects: &mut Objects,
    skipped: &mut Skipped,
    problems: &mut Problems,
) {
    let serde_yaml::Value::Mapping(mut map) = value else {
        return; // header() saw a mapping
    };
    let items = match map.remove("items") {
        None | Some(serde_yaml::Value::Null) => return,
        Some(serde_yaml::Value::Sequence(items)) => items,
        Some(_) => {
            problems.error(at, "items: expected a sequence of objects".to_owned());
            return;
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let at = Place {
            item: Some(i),
            ..at.clone()
        };
        let declared = match (&item, item_kind) {
            // A typed list's items usually carry no header; if they do, it must agree.
            (serde_yaml::Value::Mapping(m), Some(k)) if !m.contains_key("kind") => Ok(k),
            _ => match header(&item) {
                Ok((api_version, kind)) => match Kind::of(&kind) {
                    Some(k) if item_kind.is_none_or(|want| want == k) => {
                        let want = match k {
                            Kind::Service => Service::API_VERSION,
                            Kind::EndpointSlice => EndpointSlice::API_VERSION,
                        };
                        if api_version == want {
                            Ok(k)
                        } else {
                            Err(format!(
                                "{kind} has apiVersion {api_version:?}; expected {want:?}"
                            ))
                        }
                    }
                    Some(_) => Err(format!("a {kind} in a list of another kind")),
                    None if item_kind.is_none() => {
                        skipped.add(&api_version, &kind);
                        continue;
                    }
                    None => Err(format!("a {kind} in a list of another kind")),
                },
                Err(reason) => Err(reason),
            },
        };
        match declared {
            Err(reason) => problems.error(&at, reason),
            Ok(Kind::Service) => {
                if let Some(obj) = item_typed::<Service>(&at, doc, i, item, problems) {
                    objects.services.push(Located { at, obj });
                }
            }
            Ok(Kind::EndpointSlice) => {
                if let Some(obj) = item_typed::<EndpointSlice>(&at, doc, i, item, problems) {
                    objects.slices.push(Located { at, obj });
                }
            }
        }
    }
}

/// Parses a document as `T`, whose kind it declared, checking its apiVersion first.
fn typed<T>(at: &Place, doc: &Document, api_version: &str, problems: &mut Problems) -> Option<T>
where
    T: Resource + DeserializeOwned,
{
    if api_version != T::API_VERSION {
        problems.error(
            at,
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
            let (line, reason) = locate(&e, doc);
            problems.error(
                &at.at_line(line.unwrap_or(at.line)),
                format!("invalid {}: {reason}", T::KIND),
            );
            None
        }
    }
}

/// Converts list item `index` to `T`. On failure the item is parsed again from the
/// document's text, alone, so that the problem names the line and the key path
/// (`items[3].spec.ports[0].port`) as serde_yaml reports them from text.
fn item_typed<T>(
    at: &Place,
    doc: &Document,
    index: usize,
    item: serde_yaml::Value,
    problems: &mut Problems,
) -> Option<T>
where
    T: Resource + DeserializeOwned,
{
    let value_error = match serde_yaml::from_value::<T>(item) {
        Ok(obj) => return Some(obj),
        Err(e) => e,
    };
    let seed = ItemAt::<T> {
        index,
        item: PhantomData,
    };
    let (line, reason) = match seed.deserialize(serde_yaml::Deserializer::from_str(&doc.text)) {
        Err(e) => locate(&e, doc),
        // Text and value disagree (they should not): say what the value said.
        Ok(()) => (None, value_error.to_string()),
    };
    problems.error(
        &at.at_line(line.unwrap_or(at.line)),
        format!("invalid {}: {reason}", T::KIND),
    );
    None
}

/// Deserializes only `items[index]` of a list document as `T`, skipping everything else.
struct ItemAt<T> {
    index: usize,
    item: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for ItemAt<T> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for ItemAt<T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                map.next_value_seed(Items::<T> {
                    index: self.index,
                    item: PhantomData,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The `items` sequence of [`ItemAt`].
struct Items<T> {
    index: usize,
    item: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Items<T> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for Items<T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let more = if i == self.index {
                seq.next_element::<T>()?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            i += 1;
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
        split(text)
            .iter()
            .filter(|d| d.content.is_some())
            .map(|d| (d.start, d.content))
            .collect()
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
