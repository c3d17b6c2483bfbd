//! SLO specs in the three formats Sloth reads, loaded into one model.
//!
//! - `version: prometheus/v1` (Sloth's own format, snake_case fields);
//! - `apiVersion: sloth.slok.dev/v1`, `kind: PrometheusServiceLevel` (the
//!   Kubernetes custom resource, camelCase fields);
//! - `apiVersion: openslo/v1alpha`, `kind: SLO` (OpenSLO; each objective
//!   becomes one SLO named `<metadata.name>-<index>`).
//!
//! A file may hold several documents separated by `---`; a directory is read
//! recursively (`*.yml`, `*.yaml`). Loading never panics: every problem
//! becomes a [`SpecError`] naming the file, the document, the SLO, the field
//! and, where the YAML parser knows it, the line and column. Unknown fields
//! are ignored, as Sloth ignores them.
//!
//! Semantic checks (names, objective range, queries) are in
//! [`crate::validate`]; this module only turns text into the model.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use crate::duration::PromDuration;

/// Where in the input something is: file, document (1-based among the
/// non-empty documents of the file), SLO, field, line and column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The file, `None` for text that did not come from a file.
    pub file: Option<PathBuf>,
    /// 1-based index of the document in the file; 0 for the file as a whole.
    pub document: usize,
    /// The SLO's name, when the problem belongs to one SLO.
    pub slo: Option<String>,
    /// The field's path in the document, e.g. `slos[1].objective`.
    pub field: Option<String>,
    /// 1-based line in the file, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(p) => write!(f, "{}", p.display())?,
            None => f.write_str("<input>")?,
        }
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if let Some(s) = &self.slo {
            write!(f, ": SLO {s:?}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        Ok(())
    }
}

/// A problem with an SLO spec, and where it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{origin}: {kind}")]
pub struct SpecError {
    pub origin: Origin,
    pub kind: SpecErrorKind,
}

/// What is wrong with an SLO spec.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecErrorKind {
    /// The file or directory could not be read.
    #[error("cannot read: {0}")]
    Read(String),
    /// A directory held no `*.yml`/`*.yaml` file.
    #[error("no SLO spec files (*.yml, *.yaml) found")]
    NoFiles,
    /// The text is not YAML, or not the shape the format requires.
    #[error("{0}")]
    Yaml(String),
    /// The document is none of the supported formats.
    #[error(
        "unknown spec format ({0}); expected `version: prometheus/v1`, `apiVersion: sloth.slok.dev/v1` with `kind: PrometheusServiceLevel`, or `apiVersion: openslo/v1alpha` with `kind: SLO`"
    )]
    UnknownFormat(String),
    /// A Sloth feature guard does not implement.
    #[error(
        "{0} is not supported by guard: Sloth plugins are Go code; express the SLI as `events` or `raw` queries"
    )]
    Unsupported(String),
    /// The spec breaks one of Sloth's rules (or guard's PromQL check).
    #[error("{0}")]
    Invalid(String),
    /// The same SLO ID (`<service>-<name>`) is defined twice in the input.
    #[error("SLO ID {id:?} is already defined at {first}")]
    Duplicate { id: String, first: String },
}

impl SpecError {
    pub(crate) fn new(origin: Origin, kind: SpecErrorKind) -> Self {
        Self { origin, kind }
    }
}

/// Which format a document was written in, with what the output needs of it.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// `version: prometheus/v1`.
    Prometheus,
    /// `kind: PrometheusServiceLevel`: the output is a `PrometheusRule`.
    Kubernetes(K8sMeta),
    /// OpenSLO `v1alpha`.
    OpenSlo,
}

impl Format {
    /// The `sloth_spec` label value.
    pub fn spec_label(&self) -> &'static str {
        match self {
            Format::Prometheus => "prometheus/v1",
            Format::Kubernetes(_) => "sloth.slok.dev/v1",
            Format::OpenSlo => "openslo/v1alpha",
        }
    }

    /// The `sloth_mode` label value for the CLI.
    pub fn mode_label(&self) -> &'static str {
        match self {
            Format::Prometheus => "cli-gen-prom",
            Format::Kubernetes(_) => "cli-gen-k8s",
            Format::OpenSlo => "cli-gen-openslo",
        }
    }
}

/// The Kubernetes object metadata a `PrometheusRule` inherits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct K8sMeta {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// One document of a spec file: a service's SLOs in one format.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecDocument {
    pub file: Option<PathBuf>,
    /// 1-based index among the file's non-empty documents.
    pub document: usize,
    pub format: Format,
    pub slos: Vec<SloSpec>,
}

/// How an SLO measures its error ratio.
#[derive(Debug, Clone, PartialEq)]
pub enum Sli {
    /// Bad and total event queries: error ratio = errors / total.
    Events {
        error_query: String,
        total_query: String,
    },
    /// One query that already yields the error ratio.
    Raw { error_ratio_query: String },
    /// The spec gave no SLI (or an empty one): invalid, reported by validation.
    Missing,
    /// The spec gave both kinds: invalid, reported by validation.
    Both,
}

/// One alert (page or ticket) of an SLO.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertMeta {
    pub disable: bool,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// One SLO, whatever format it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SloSpec {
    /// `<service>-<name>`, the identity Sloth gives its series.
    pub id: String,
    pub name: String,
    pub service: String,
    pub description: String,
    /// The period when the spec fixes one (OpenSLO `timeWindows`), else the
    /// generator's default applies.
    pub period: Option<PromDuration>,
    /// Percent, e.g. `99.9`.
    pub objective: f64,
    /// Spec-level labels merged with the SLO's own (the SLO's win).
    pub labels: BTreeMap<String, String>,
    pub sli: Sli,
    pub page_alert: AlertMeta,
    pub ticket_alert: AlertMeta,
    /// Field paths and positions, for error messages.
    pub(crate) fields: FieldMap,
}

/// Fields of an SLO that error messages point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Field {
    Slo,
    Name,
    Service,
    Objective,
    Period,
    Labels,
    /// The spec's top-level labels, which every SLO of the document inherits.
    SpecLabels,
    Sli,
    ErrorQuery,
    TotalQuery,
    RawQuery,
    AlertName,
    Alerting,
    PageAlert,
    TicketAlert,
}

/// Paths and positions of an SLO's fields in its document.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldMap {
    pub(crate) entries: BTreeMap<Field, (String, Option<(u64, u64)>)>,
    /// Label keys the SLO has from the spec's top-level labels (not set again
    /// by the SLO's own), so a bad one is reported where it was written.
    pub(crate) inherited_labels: BTreeSet<String>,
}

impl FieldMap {
    fn set(&mut self, field: Field, path: String, pos: Option<(u64, u64)>) {
        self.entries.insert(field, (path, pos));
    }
}

impl SloSpec {
    /// The origin of one of this SLO's fields, for an error message.
    pub(crate) fn origin(&self, doc: &SpecDocument, field: Field) -> Origin {
        let slo_pos = self.fields.entries.get(&Field::Slo).and_then(|e| e.1);
        let (path, pos) = match self.fields.entries.get(&field) {
            Some((path, pos)) => (Some(path.clone()), pos.or(slo_pos)),
            None => (None, slo_pos),
        };
        Origin {
            file: doc.file.clone(),
            document: doc.document,
            slo: Some(if self.name.is_empty() {
                self.id.clone()
            } else {
                self.name.clone()
            }),
            field: path,
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
        }
    }
}

/// Reads a spec file, or every `*.yml`/`*.yaml` under a directory.
///
/// Returns the documents that loaded and the errors of those that did not;
/// one bad document does not hide the others.
pub fn load_path(path: &Path) -> (Vec<SpecDocument>, Vec<SpecError>) {
    match spec_files(path) {
        Ok(files) => {
            let mut docs = Vec::new();
            let mut errors = Vec::new();
            for file in files {
                let (d, e) = load_file(&file);
                docs.extend(d);
                errors.extend(e);
            }
            (docs, errors)
        }
        Err(e) => (Vec::new(), vec![*e]),
    }
}

/// The spec files a path names: the file itself, or the YAML files under a
/// directory, recursively, in lexical order.
pub fn spec_files(path: &Path) -> Result<Vec<PathBuf>, Box<SpecError>> {
    let origin = || Origin {
        file: Some(path.to_path_buf()),
        ..Origin::default()
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| Box::new(SpecError::new(origin(), SpecErrorKind::Read(e.to_string()))))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    crate::windows::collect_yaml_files(path, &mut files)
        .map_err(|e| Box::new(SpecError::new(origin(), SpecErrorKind::Read(e.to_string()))))?;
    if files.is_empty() {
        return Err(Box::new(SpecError::new(origin(), SpecErrorKind::NoFiles)));
    }
    Ok(files)
}

/// Reads and parses one spec file.
pub fn load_file(path: &Path) -> (Vec<SpecDocument>, Vec<SpecError>) {
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => parse_str(&text, Some(path)),
            Err(e) => (
                Vec::new(),
                vec![SpecError::new(
                    Origin {
                        file: Some(path.to_path_buf()),
                        ..Origin::default()
                    },
                    SpecErrorKind::Read(format!("not UTF-8 text: {e}")),
                )],
            ),
        },
        Err(e) => (
            Vec::new(),
            vec![SpecError::new(
                Origin {
                    file: Some(path.to_path_buf()),
                    ..Origin::default()
                },
                SpecErrorKind::Read(e.to_string()),
            )],
        ),
    }
}

/// A document of a multi-document text, with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDocument<'a> {
    pub text: &'a str,
    /// 1-based line of the document's first line in the whole text.
    pub first_line: u64,
}

/// Splits a YAML stream on `---` lines and drops documents that hold only
/// blanks and comments, as Sloth does.
pub fn split_documents(text: &str) -> Vec<RawDocument<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u64;
    let mut offset = 0usize;
    for (line_no, line) in (1u64..).zip(text.split_inclusive('\n')) {
        let content = line.trim_end_matches(['\n', '\r']);
        let is_marker = content == "---"
            || content.starts_with("--- ")
            || content.starts_with("---\t")
            || content.starts_with("---#");
        if is_marker {
            docs.push(RawDocument {
                text: &text[start..offset],
                first_line: start_line,
            });
            // The document's content begins after the marker line; a flow
            // value on the marker line itself (`--- {a: 1}`) is kept.
            let rest = &content[3..];
            if rest.trim_start().starts_with('#') || rest.trim().is_empty() {
                start = offset + line.len();
                start_line = line_no + 1;
            } else {
                start = offset + 3;
                start_line = line_no;
            }
        }
        offset += line.len();
    }
    docs.push(RawDocument {
        text: &text[start..],
        first_line: start_line,
    });
    docs.retain(|d| {
        d.text.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        })
    });
    docs
}

/// Parses spec text (one or more documents).
pub fn parse_str(text: &str, file: Option<&Path>) -> (Vec<SpecDocument>, Vec<SpecError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in split_documents(text).into_iter().enumerate() {
        let ctx = DocCtx {
            file: file.map(Path::to_path_buf),
            document: i + 1,
            line_offset: raw.first_line.saturating_sub(1),
        };
        match parse_document(&ctx, raw.text) {
            Ok(doc) => docs.push(doc),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if docs.is_empty() && errors.is_empty() {
        errors.push(SpecError::new(
            Origin {
                file: file.map(Path::to_path_buf),
                ..Origin::default()
            },
            SpecErrorKind::Invalid("the file holds no SLO spec document".to_string()),
        ));
    }
    (docs, errors)
}

/// Where the document being parsed is.
struct DocCtx {
    file: Option<PathBuf>,
    document: usize,
    line_offset: u64,
}

impl DocCtx {
    fn origin(&self, field: Option<&str>, pos: Option<(u64, u64)>) -> Origin {
        Origin {
            file: self.file.clone(),
            document: self.document,
            slo: None,
            field: field.map(str::to_string),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
        }
    }

    fn error(
        &self,
        field: Option<&str>,
        pos: Option<(u64, u64)>,
        kind: SpecErrorKind,
    ) -> SpecError {
        SpecError::new(self.origin(field, pos), kind)
    }

    /// Position of a parsed value in the whole file.
    fn pos<T>(&self, s: &Spanned<T>) -> Option<(u64, u64)> {
        let l = s.referenced;
        if l.line() == 0 {
            return None;
        }
        Some((l.line() + self.line_offset, l.column()))
    }

    /// A YAML parser error, with its position moved into the whole file and
    /// the key on that line named as the field (the parser gives no path).
    fn yaml_error(&self, e: &serde_saphyr::Error, text: &str) -> SpecError {
        let loc = e.location().filter(|l| l.line() > 0);
        let pos = loc.map(|l| (l.line() + self.line_offset, l.column()));
        let field = loc.and_then(|l| {
            let line = text
                .lines()
                .nth(usize::try_from(l.line()).ok()?.checked_sub(1)?)?;
            key_on_line(line)
        });
        let msg = yaml_message(e);
        self.error(field.as_deref(), pos, SpecErrorKind::Yaml(msg))
    }
}

/// The mapping key a YAML line sets (`  - name: x` gives `name`), if any.
fn key_on_line(line: &str) -> Option<String> {
    let t = line.trim_start();
    let t = t.strip_prefix("- ").unwrap_or(t).trim_start();
    let (key, _) = t.split_once(':')?;
    let key = key.trim().trim_matches(['"', '\'']);
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    ok.then(|| key.to_string())
}

/// The parser's message without its source snippet or position (we print the
/// position ourselves, relative to the whole file).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    // The rendered message may end with " at line X column Y": drop it.
    let text = match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    text.lines()
        .next()
        .unwrap_or("invalid YAML")
        .trim()
        .to_string()
}

/// Treats an explicit `null` as the type's default (Go's YAML does).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

type Labels = BTreeMap<String, String>;

/// The keys that tell the formats apart.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    version: Option<serde_json::Value>,
    #[serde(default)]
    api_version: Option<serde_json::Value>,
    #[serde(default)]
    kind: Option<serde_json::Value>,
}

fn as_text(v: &Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
        None => None,
    }
}

/// The spec formats, told apart by their top-level keys.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Prometheus,
    Kubernetes,
    OpenSlo,
}

/// Recognises the format from unindented `version:`, `apiVersion:` and
/// `kind:` lines, as Sloth does (with regular expressions on the text), which
/// spares a full YAML parse of large specs. `None` when the lines do not say
/// (flow-style mappings, unknown versions): the YAML probe decides then.
fn sniff_kind(text: &str) -> Option<Kind> {
    let (mut version, mut api_version, mut kind) = (None, None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key.starts_with([' ', '\t']) {
            continue;
        }
        let value = value
            .split(" #")
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches(['"', '\'']);
        match key {
            "version" => version = Some(value),
            "apiVersion" => api_version = Some(value),
            "kind" => kind = Some(value),
            _ => {}
        }
    }
    match (version, api_version, kind) {
        (Some("prometheus/v1"), _, _) => Some(Kind::Prometheus),
        (_, Some("sloth.slok.dev/v1"), Some("PrometheusServiceLevel")) => Some(Kind::Kubernetes),
        (_, Some("openslo/v1alpha"), Some("SLO")) => Some(Kind::OpenSlo),
        _ => None,
    }
}

fn parse_document(ctx: &DocCtx, text: &str) -> Result<SpecDocument, Vec<SpecError>> {
    match sniff_kind(text) {
        Some(Kind::Prometheus) => return parse_prometheus(ctx, text),
        Some(Kind::Kubernetes) => return parse_k8s(ctx, text),
        Some(Kind::OpenSlo) => return parse_openslo(ctx, text),
        None => {}
    }
    let probe: Probe = serde_saphyr::from_str(text).map_err(|e| {
        let mut err = ctx.yaml_error(&e, text);
        if let SpecErrorKind::Yaml(m) = &mut err.kind {
            *m = format!("not an SLO spec document (a YAML mapping is expected): {m}");
        }
        vec![err]
    })?;
    let version = as_text(&probe.version);
    let api_version = as_text(&probe.api_version);
    let kind = as_text(&probe.kind);
    match (version.as_deref(), api_version.as_deref(), kind.as_deref()) {
        (Some("prometheus/v1"), _, _) => parse_prometheus(ctx, text),
        (_, Some("sloth.slok.dev/v1"), Some("PrometheusServiceLevel")) => parse_k8s(ctx, text),
        (_, Some("openslo/v1alpha"), Some("SLO")) => parse_openslo(ctx, text),
        _ => {
            let mut found = Vec::new();
            if let Some(v) = &version {
                found.push(format!("version {v:?}"));
            }
            if let Some(v) = &api_version {
                found.push(format!("apiVersion {v:?}"));
            }
            if let Some(v) = &kind {
                found.push(format!("kind {v:?}"));
            }
            if found.is_empty() {
                found.push("no version, apiVersion or kind".to_string());
            }
            Err(vec![ctx.error(
                None,
                None,
                SpecErrorKind::UnknownFormat(found.join(", ")),
            )])
        }
    }
}

/// Sloth's SLO structs, written once and instantiated for the two casings
/// Sloth uses: snake_case in `prometheus/v1`, camelCase in the Kubernetes
/// resource. Fields of the other casing are unknown, hence ignored, exactly
/// as in Sloth.
macro_rules! sloth_structs {
    ($module:ident, $case:literal) => {
        mod $module {
            use super::*;

            #[derive(Deserialize, Default)]
            #[serde(rename_all = $case)]
            pub(super) struct Plugins {
                #[serde(default, deserialize_with = "null_default")]
                pub chain: Vec<IgnoredAny>,
            }

            #[derive(Deserialize)]
            #[serde(rename_all = $case)]
            pub(super) struct Slo {
                #[serde(default)]
                pub name: Option<Spanned<String>>,
                #[serde(default, deserialize_with = "null_default")]
                pub description: String,
                #[serde(default)]
                pub objective: Option<Spanned<f64>>,
                #[serde(default, deserialize_with = "null_default")]
                pub plugins: Option<Plugins>,
                #[serde(default)]
                pub labels: Option<Spanned<Option<Labels>>>,
                #[serde(default)]
                pub sli: Option<Spanned<Option<Sli>>>,
                #[serde(default, deserialize_with = "null_default")]
                pub alerting: Alerting,
            }

            #[derive(Deserialize, Default)]
            #[serde(rename_all = $case)]
            pub(super) struct Sli {
                #[serde(default)]
                pub raw: Option<Raw>,
                #[serde(default)]
                pub events: Option<Events>,
                #[serde(default)]
                pub plugin: Option<IgnoredAny>,
            }

            #[derive(Deserialize, Default)]
            #[serde(rename_all = $case)]
            pub(super) struct Raw {
                #[serde(default)]
                pub error_ratio_query: Option<Spanned<Option<String>>>,
            }

            #[derive(Deserialize, Default)]
            #[serde(rename_all = $case)]
            pub(super) struct Events {
                #[serde(default)]
                pub error_query: Option<Spanned<Option<String>>>,
                #[serde(default)]
                pub total_query: Option<Spanned<Option<String>>>,
            }

            #[derive(Deserialize, Default)]
            #[serde(rename_all = $case)]
            pub(super) struct Alerting {
                #[serde(default)]
                pub name: Option<Spanned<Option<String>>>,
                #[serde(default, deserialize_with = "null_default")]
                pub labels: Labels,
                #[serde(default, deserialize_with = "null_default")]
                pub annotations: Labels,
                #[serde(default)]
                pub page_alert: Option<Spanned<Option<Alert>>>,
                #[serde(default)]
                pub ticket_alert: Option<Spanned<Option<Alert>>>,
            }

            #[derive(Deserialize, Default)]
            #[serde(rename_all = $case)]
            pub(super) struct Alert {
                #[serde(default, deserialize_with = "null_default")]
                pub disable: bool,
                #[serde(default, deserialize_with = "null_default")]
                pub labels: Labels,
                #[serde(default, deserialize_with = "null_default")]
                pub annotations: Labels,
            }
        }
    };
}

sloth_structs!(snake, "snake_case");
sloth_structs!(camel, "camelCase");

#[derive(Deserialize)]
struct PromSpec {
    #[serde(default)]
    service: Option<Spanned<Option<String>>>,
    #[serde(default)]
    labels: Option<Spanned<Option<Labels>>>,
    #[serde(default, deserialize_with = "null_default")]
    slo_plugins: Option<snake::Plugins>,
    #[serde(default)]
    slos: Option<Spanned<Option<Vec<Spanned<snake::Slo>>>>>,
}

#[derive(Deserialize)]
struct K8sSpec {
    #[serde(default, deserialize_with = "null_default")]
    metadata: K8sMetadata,
    #[serde(default)]
    spec: Option<Spanned<Option<K8sSpecBody>>>,
}

#[derive(Deserialize, Default)]
struct K8sMetadata {
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "null_default")]
    namespace: String,
    #[serde(default, deserialize_with = "null_default")]
    labels: Labels,
    #[serde(default, deserialize_with = "null_default")]
    annotations: Labels,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct K8sSpecBody {
    #[serde(default)]
    service: Option<Spanned<Option<String>>>,
    #[serde(default)]
    labels: Option<Spanned<Option<Labels>>>,
    #[serde(default, deserialize_with = "null_default")]
    slo_plugins: Option<camel::Plugins>,
    #[serde(default)]
    slos: Option<Spanned<Option<Vec<Spanned<camel::Slo>>>>>,
}

/// Field names that differ between the two Sloth casings.
struct Casing {
    error_query: &'static str,
    total_query: &'static str,
    raw_query: &'static str,
    page_alert: &'static str,
    ticket_alert: &'static str,
}

const SNAKE: Casing = Casing {
    error_query: "error_query",
    total_query: "total_query",
    raw_query: "error_ratio_query",
    page_alert: "page_alert",
    ticket_alert: "ticket_alert",
};

const CAMEL: Casing = Casing {
    error_query: "errorQuery",
    total_query: "totalQuery",
    raw_query: "errorRatioQuery",
    page_alert: "pageAlert",
    ticket_alert: "ticketAlert",
};

/// A line and column.
type Pos = Option<(u64, u64)>;
/// A text and where it was.
type Located = (String, Pos);

/// The service part of a Sloth spec, shared by its SLOs.
struct ServiceCtx<'a> {
    name: &'a str,
    field: &'a str,
    pos: Pos,
    labels: &'a Labels,
    /// The path of the spec's `labels` and where they are.
    labels_field: &'a str,
    labels_pos: Pos,
}

/// A spec's top-level labels (an explicit `null` is none) and where they are.
fn top_level_labels(ctx: &DocCtx, labels: Option<Spanned<Option<Labels>>>) -> (Labels, Pos) {
    match labels {
        Some(l) => {
            let p = ctx.pos(&l);
            (l.value.unwrap_or_default(), p)
        }
        None => (Labels::new(), None),
    }
}

/// The casing-independent view of one Sloth SLO entry.
struct SlothSloView {
    pos: Option<(u64, u64)>,
    name: Option<(String, Option<(u64, u64)>)>,
    description: String,
    objective: Option<(f64, Option<(u64, u64)>)>,
    has_plugins: bool,
    labels: (Labels, Option<(u64, u64)>),
    sli_pos: Option<(u64, u64)>,
    raw: Option<(String, Option<(u64, u64)>)>,
    events: Option<[Located; 2]>,
    sli_plugin: bool,
    alert_name: (String, Option<(u64, u64)>),
    alert_labels: Labels,
    alert_annotations: Labels,
    page: (AlertMeta, Option<(u64, u64)>),
    ticket: (AlertMeta, Option<(u64, u64)>),
}

fn opt_string(
    ctx: &DocCtx,
    v: Option<Spanned<Option<String>>>,
) -> (Option<String>, Option<(u64, u64)>) {
    match v {
        Some(s) => {
            let pos = ctx.pos(&s);
            (s.value, pos)
        }
        None => (None, None),
    }
}

macro_rules! view_slo {
    ($ctx:expr, $s:expr, $m:ident) => {{
        let ctx: &DocCtx = $ctx;
        let spanned = $s;
        let pos = ctx.pos(&spanned);
        let slo = spanned.value;
        let (labels, labels_pos) = match slo.labels {
            Some(l) => {
                let p = ctx.pos(&l);
                (l.value.unwrap_or_default(), p)
            }
            None => (Labels::new(), None),
        };
        let (sli, sli_pos) = match slo.sli {
            Some(s) => {
                let p = ctx.pos(&s);
                (s.value.unwrap_or_default(), p)
            }
            None => (Default::default(), None),
        };
        let raw = sli.raw.map(|r| {
            let (q, p) = opt_string(ctx, r.error_ratio_query);
            (q.unwrap_or_default(), p)
        });
        let events = sli.events.map(|e| {
            let (eq, ep) = opt_string(ctx, e.error_query);
            let (tq, tp) = opt_string(ctx, e.total_query);
            [(eq.unwrap_or_default(), ep), (tq.unwrap_or_default(), tp)]
        });
        let (alert_name, alert_name_pos) = opt_string(ctx, slo.alerting.name);
        let alert = |a: Option<Spanned<Option<$m::Alert>>>| match a {
            Some(a) => {
                let p = ctx.pos(&a);
                let a = a.value.unwrap_or_default();
                (
                    AlertMeta {
                        disable: a.disable,
                        name: String::new(),
                        labels: a.labels,
                        annotations: a.annotations,
                    },
                    p,
                )
            }
            None => (AlertMeta::default(), None),
        };
        let page = alert(slo.alerting.page_alert);
        let ticket = alert(slo.alerting.ticket_alert);
        SlothSloView {
            pos,
            name: slo.name.map(|n| {
                let p = ctx.pos(&n);
                (n.value, p)
            }),
            description: slo.description,
            objective: slo.objective.map(|o| {
                let p = ctx.pos(&o);
                (o.value, p)
            }),
            has_plugins: slo.plugins.map(|p| !p.chain.is_empty()).unwrap_or(false),
            labels: (labels, labels_pos),
            sli_pos,
            raw,
            events,
            sli_plugin: sli.plugin.is_some(),
            alert_name: (alert_name.unwrap_or_default(), alert_name_pos),
            alert_labels: slo.alerting.labels,
            alert_annotations: slo.alerting.annotations,
            page,
            ticket,
        }
    }};
}

/// Maps Sloth SLO entries to the model, as Sloth's loaders do.
fn sloth_slos(
    ctx: &DocCtx,
    prefix: &str,
    casing: &Casing,
    svc: &ServiceCtx<'_>,
    views: Vec<SlothSloView>,
    errors: &mut Vec<SpecError>,
) -> Vec<SloSpec> {
    let (service, service_field, spec_labels) = (svc.name, (svc.field, svc.pos), svc.labels);
    let mut slos = Vec::with_capacity(views.len());
    for (i, v) in views.into_iter().enumerate() {
        let p = format!("{prefix}[{i}]");
        let name = v.name.as_ref().map(|n| n.0.clone()).unwrap_or_default();
        let slo_origin = |field: &str, pos: Option<(u64, u64)>| Origin {
            file: ctx.file.clone(),
            document: ctx.document,
            slo: Some(if name.is_empty() {
                format!("#{}", i + 1)
            } else {
                name.clone()
            }),
            field: Some(field.to_string()),
            line: pos.or(v.pos).map(|p| p.0),
            column: pos.or(v.pos).map(|p| p.1),
        };
        if v.has_plugins {
            errors.push(SpecError::new(
                slo_origin(&format!("{p}.plugins"), None),
                SpecErrorKind::Unsupported("an SLO plugin chain".to_string()),
            ));
        }
        if v.sli_plugin {
            errors.push(SpecError::new(
                slo_origin(&format!("{p}.sli.plugin"), v.sli_pos),
                SpecErrorKind::Unsupported("an SLI plugin".to_string()),
            ));
        }
        let mut fields = FieldMap::default();
        fields.set(Field::Slo, p.clone(), v.pos);
        fields.set(
            Field::Name,
            format!("{p}.name"),
            v.name.as_ref().and_then(|n| n.1),
        );
        fields.set(Field::Service, service_field.0.to_string(), service_field.1);
        fields.set(
            Field::Objective,
            format!("{p}.objective"),
            v.objective.and_then(|o| o.1),
        );
        fields.set(Field::Labels, format!("{p}.labels"), v.labels.1);
        fields.set(
            Field::SpecLabels,
            svc.labels_field.to_string(),
            svc.labels_pos,
        );
        fields.inherited_labels = spec_labels
            .keys()
            .filter(|k| !v.labels.0.contains_key(*k))
            .cloned()
            .collect();
        fields.set(Field::Sli, format!("{p}.sli"), v.sli_pos);
        let sli = match (v.events, v.raw) {
            (Some([(eq, ep), (tq, tp)]), None) => {
                fields.set(
                    Field::ErrorQuery,
                    format!("{p}.sli.events.{}", casing.error_query),
                    ep,
                );
                fields.set(
                    Field::TotalQuery,
                    format!("{p}.sli.events.{}", casing.total_query),
                    tp,
                );
                Sli::Events {
                    error_query: eq,
                    total_query: tq,
                }
            }
            (None, Some((q, qp))) => {
                fields.set(
                    Field::RawQuery,
                    format!("{p}.sli.raw.{}", casing.raw_query),
                    qp,
                );
                Sli::Raw {
                    error_ratio_query: q,
                }
            }
            (Some(_), Some(_)) => Sli::Both,
            (None, None) => Sli::Missing,
        };
        fields.set(
            Field::AlertName,
            format!("{p}.alerting.name"),
            v.alert_name.1,
        );
        fields.set(Field::Alerting, format!("{p}.alerting"), v.alert_name.1);
        fields.set(
            Field::PageAlert,
            format!("{p}.alerting.{}", casing.page_alert),
            v.page.1,
        );
        fields.set(
            Field::TicketAlert,
            format!("{p}.alerting.{}", casing.ticket_alert),
            v.ticket.1,
        );

        let mut labels = spec_labels.clone();
        labels.extend(v.labels.0);
        let alert = |(a, _): (AlertMeta, Option<(u64, u64)>)| -> AlertMeta {
            if a.disable {
                return AlertMeta {
                    disable: true,
                    ..AlertMeta::default()
                };
            }
            let mut labels = v.alert_labels.clone();
            labels.extend(a.labels);
            let mut annotations = v.alert_annotations.clone();
            annotations.extend(a.annotations);
            AlertMeta {
                disable: false,
                name: v.alert_name.0.clone(),
                labels,
                annotations,
            }
        };
        slos.push(SloSpec {
            id: format!("{service}-{name}"),
            name: name.clone(),
            service: service.to_string(),
            description: v.description,
            period: None,
            objective: v.objective.map(|o| o.0).unwrap_or(0.0),
            labels,
            sli,
            page_alert: alert(v.page),
            ticket_alert: alert(v.ticket),
            fields,
        });
    }
    slos
}

fn parse_prometheus(ctx: &DocCtx, text: &str) -> Result<SpecDocument, Vec<SpecError>> {
    let spec: PromSpec =
        serde_saphyr::from_str(text).map_err(|e| vec![ctx.yaml_error(&e, text)])?;
    let mut errors = Vec::new();
    if spec
        .slo_plugins
        .map(|p| !p.chain.is_empty())
        .unwrap_or(false)
    {
        errors.push(ctx.error(
            Some("slo_plugins"),
            None,
            SpecErrorKind::Unsupported("an SLO plugin chain".to_string()),
        ));
    }
    let (service, service_pos) = opt_string(ctx, spec.service);
    let service = service.unwrap_or_default();
    let (entries, slos_pos) = match spec.slos {
        Some(s) => {
            let p = ctx.pos(&s);
            (s.value.unwrap_or_default(), p)
        }
        None => (Vec::new(), None),
    };
    if entries.is_empty() {
        errors.push(ctx.error(
            Some("slos"),
            slos_pos,
            SpecErrorKind::Invalid("at least one SLO is required".to_string()),
        ));
        return Err(errors);
    }
    let views = entries
        .into_iter()
        .map(|s| view_slo!(ctx, s, snake))
        .collect();
    let (labels, labels_pos) = top_level_labels(ctx, spec.labels);
    let slos = sloth_slos(
        ctx,
        "slos",
        &SNAKE,
        &ServiceCtx {
            name: &service,
            field: "service",
            pos: service_pos,
            labels: &labels,
            labels_field: "labels",
            labels_pos,
        },
        views,
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(SpecDocument {
        file: ctx.file.clone(),
        document: ctx.document,
        format: Format::Prometheus,
        slos,
    })
}

fn parse_k8s(ctx: &DocCtx, text: &str) -> Result<SpecDocument, Vec<SpecError>> {
    let spec: K8sSpec = serde_saphyr::from_str(text).map_err(|e| vec![ctx.yaml_error(&e, text)])?;
    let mut errors = Vec::new();
    let (body, body_pos) = match spec.spec {
        Some(s) => {
            let p = ctx.pos(&s);
            (s.value, p)
        }
        None => (None, None),
    };
    let Some(body) = body else {
        return Err(vec![ctx.error(
            Some("spec"),
            body_pos,
            SpecErrorKind::Invalid("spec is required".to_string()),
        )]);
    };
    if body
        .slo_plugins
        .map(|p| !p.chain.is_empty())
        .unwrap_or(false)
    {
        errors.push(ctx.error(
            Some("spec.sloPlugins"),
            None,
            SpecErrorKind::Unsupported("an SLO plugin chain".to_string()),
        ));
    }
    let (service, service_pos) = opt_string(ctx, body.service);
    let service = service.unwrap_or_default();
    let (entries, slos_pos) = match body.slos {
        Some(s) => {
            let p = ctx.pos(&s);
            (s.value.unwrap_or_default(), p)
        }
        None => (Vec::new(), None),
    };
    if entries.is_empty() {
        errors.push(ctx.error(
            Some("spec.slos"),
            slos_pos.or(body_pos),
            SpecErrorKind::Invalid("at least one SLO is required".to_string()),
        ));
        return Err(errors);
    }
    let views = entries
        .into_iter()
        .map(|s| view_slo!(ctx, s, camel))
        .collect();
    let (labels, labels_pos) = top_level_labels(ctx, body.labels);
    let slos = sloth_slos(
        ctx,
        "spec.slos",
        &CAMEL,
        &ServiceCtx {
            name: &service,
            field: "spec.service",
            pos: service_pos,
            labels: &labels,
            labels_field: "spec.labels",
            labels_pos,
        },
        views,
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(SpecDocument {
        file: ctx.file.clone(),
        document: ctx.document,
        format: Format::Kubernetes(K8sMeta {
            name: spec.metadata.name,
            namespace: spec.metadata.namespace,
            labels: spec.metadata.labels,
            annotations: spec.metadata.annotations,
        }),
        slos,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenSloSpec {
    #[serde(default, deserialize_with = "null_default")]
    metadata: OpenSloMetadata,
    #[serde(default)]
    spec: Option<Spanned<Option<OpenSloBody>>>,
}

#[derive(Deserialize, Default)]
struct OpenSloMetadata {
    #[serde(default)]
    name: Option<Spanned<Option<String>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenSloBody {
    #[serde(default)]
    service: Option<Spanned<Option<String>>>,
    #[serde(default, deserialize_with = "null_default")]
    description: String,
    #[serde(default, deserialize_with = "null_default")]
    objectives: Vec<Spanned<OpenSloObjective>>,
    #[serde(default, deserialize_with = "null_default")]
    time_windows: Vec<Spanned<OpenSloTimeWindow>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenSloObjective {
    #[serde(default)]
    ratio_metrics: Option<Spanned<Option<OpenSloRatio>>>,
    #[serde(default)]
    target: Option<Spanned<Option<f64>>>,
}

#[derive(Deserialize)]
struct OpenSloRatio {
    #[serde(default)]
    good: Option<OpenSloQuery>,
    #[serde(default)]
    total: Option<OpenSloQuery>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OpenSloQuery {
    #[serde(default, deserialize_with = "null_default")]
    source: String,
    #[serde(default, deserialize_with = "null_default")]
    query_type: String,
    #[serde(default)]
    query: Option<Spanned<Option<String>>>,
}

#[derive(Deserialize)]
struct OpenSloTimeWindow {
    #[serde(default, deserialize_with = "null_default")]
    unit: String,
    #[serde(default)]
    count: Option<Spanned<i64>>,
}

fn parse_openslo(ctx: &DocCtx, text: &str) -> Result<SpecDocument, Vec<SpecError>> {
    let spec: OpenSloSpec =
        serde_saphyr::from_str(text).map_err(|e| vec![ctx.yaml_error(&e, text)])?;
    let (metadata_name, name_pos) = opt_string(ctx, spec.metadata.name);
    let metadata_name = metadata_name.unwrap_or_default();
    let (body, body_pos) = match spec.spec {
        Some(s) => {
            let p = ctx.pos(&s);
            (s.value, p)
        }
        None => (None, None),
    };
    let Some(body) = body else {
        return Err(vec![ctx.error(
            Some("spec"),
            body_pos,
            SpecErrorKind::Invalid("spec is required".to_string()),
        )]);
    };
    if body.objectives.is_empty() {
        return Err(vec![ctx.error(
            Some("spec.objectives"),
            body_pos,
            SpecErrorKind::Invalid("at least one SLO is required".to_string()),
        )]);
    }
    let mut errors = Vec::new();
    // Sloth accepts one time window, in days, and uses it as the SLO period.
    let mut period = None;
    let mut period_pos = None;
    match body.time_windows.as_slice() {
        [] => {}
        [w] => {
            period_pos = ctx.pos(w);
            if !w.value.unit.eq_ignore_ascii_case("day") {
                errors.push(ctx.error(
                    Some("spec.timeWindows[0].unit"),
                    period_pos,
                    SpecErrorKind::Invalid(format!(
                        "only day based time windows are supported, got unit {:?}",
                        w.value.unit
                    )),
                ));
            }
            let count = w.value.count.as_ref().map(|c| c.value).unwrap_or(0);
            if count <= 0 || count > 100_000 {
                errors.push(
                    ctx.error(
                        Some("spec.timeWindows[0].count"),
                        w.value
                            .count
                            .as_ref()
                            .and_then(|c| ctx.pos(c))
                            .or(period_pos),
                        SpecErrorKind::Invalid(format!(
                            "the time window must be a positive number of days, got {count}"
                        )),
                    ),
                );
            } else {
                period = Some(PromDuration::from_days(count as u64));
            }
        }
        _ => errors.push(ctx.error(
            Some("spec.timeWindows"),
            body_pos,
            SpecErrorKind::Invalid("only 1 time window is supported".to_string()),
        )),
    }
    let (service, service_pos) = opt_string(ctx, body.service);
    let service = service.unwrap_or_default();
    let mut slos = Vec::new();
    for (i, objective) in body.objectives.into_iter().enumerate() {
        let p = format!("spec.objectives[{i}]");
        let obj_pos = ctx.pos(&objective);
        let name = format!("{metadata_name}-{i}");
        let err = |field: String, pos: Option<(u64, u64)>, reason: String| {
            SpecError::new(
                Origin {
                    file: ctx.file.clone(),
                    document: ctx.document,
                    slo: Some(name.clone()),
                    field: Some(field),
                    line: pos.or(obj_pos).map(|p| p.0),
                    column: pos.or(obj_pos).map(|p| p.1),
                },
                SpecErrorKind::Invalid(reason),
            )
        };
        let (target, target_pos) = match objective.value.target {
            Some(t) => {
                let p = ctx.pos(&t);
                (t.value, p)
            }
            None => (None, None),
        };
        let Some(target) = target else {
            errors.push(err(
                format!("{p}.target"),
                None,
                "target is required (a ratio, e.g. 0.999)".to_string(),
            ));
            continue;
        };
        // Checked here, on what the user wrote: validation sees the percentage
        // (150 for 1.5), which would not match the spec.
        let bad_target = !(target > 0.0 && target <= 1.0);
        if bad_target {
            errors.push(err(
                format!("{p}.target"),
                target_pos,
                format!("target {target} must be a ratio in (0, 1] (e.g. 0.999 for 99.9 %)"),
            ));
        }
        let (ratio, ratio_pos) = match objective.value.ratio_metrics {
            Some(r) => {
                let p = ctx.pos(&r);
                (r.value, p)
            }
            None => (None, None),
        };
        let Some(ratio) = ratio else {
            errors.push(err(
                format!("{p}.ratioMetrics"),
                None,
                "missing ratioMetrics".to_string(),
            ));
            continue;
        };
        let good = ratio.good.unwrap_or_default();
        let total = ratio.total.unwrap_or_default();
        let mut bad = false;
        for (which, q) in [("good", &good), ("total", &total)] {
            if q.source != "prometheus" && q.source != "sloth" {
                errors.push(err(
                    format!("{p}.ratioMetrics.{which}.source"),
                    ratio_pos,
                    format!(
                        "prometheus or sloth query ratio '{which}' source is required, got {:?}",
                        q.source
                    ),
                ));
                bad = true;
            }
            if q.query_type != "promql" {
                errors.push(err(
                    format!("{p}.ratioMetrics.{which}.queryType"),
                    ratio_pos,
                    format!(
                        "unsupported '{which}' indicator query type: {:?}",
                        q.query_type
                    ),
                ));
                bad = true;
            }
        }
        if bad || bad_target {
            continue;
        }
        let (good_q, good_pos) = opt_string(ctx, good.query);
        let (total_q, _) = opt_string(ctx, total.query);
        // Sloth turns good/total into a raw error-ratio query.
        let raw = format!(
            "\n  1 - (\n    (\n      {}\n    )\n    /\n    (\n      {}\n    )\n  )\n",
            good_q.unwrap_or_default(),
            total_q.unwrap_or_default()
        );
        let mut fields = FieldMap::default();
        fields.set(Field::Slo, p.clone(), obj_pos);
        fields.set(Field::Name, "metadata.name".to_string(), name_pos);
        fields.set(Field::Service, "spec.service".to_string(), service_pos);
        fields.set(Field::Objective, format!("{p}.target"), target_pos);
        fields.set(Field::Period, "spec.timeWindows[0]".to_string(), period_pos);
        fields.set(Field::Sli, format!("{p}.ratioMetrics"), ratio_pos);
        fields.set(
            Field::RawQuery,
            format!("{p}.ratioMetrics.good.query"),
            good_pos.or(ratio_pos),
        );
        slos.push(SloSpec {
            id: format!("{service}-{metadata_name}-{i}"),
            name,
            service: service.clone(),
            description: body.description.clone(),
            period,
            objective: target * 100.0,
            labels: Labels::new(),
            sli: Sli::Raw {
                error_ratio_query: raw,
            },
            page_alert: AlertMeta {
                disable: true,
                ..AlertMeta::default()
            },
            ticket_alert: AlertMeta {
                disable: true,
                ..AlertMeta::default()
            },
            fields,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(SpecDocument {
        file: ctx.file.clone(),
        document: ctx.document,
        format: Format::OpenSlo,
        slos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PROM: &str = r#"version: "prometheus/v1"
service: "svc"
labels: {team: a}
slos:
  - name: "req"
    objective: 99.9
    labels: {tier: "2"}
    sli:
      events:
        error_query: sum(rate(x{code=~"5.."}[{{.window}}]))
        total_query: sum(rate(x[{{.window}}]))
    alerting:
      name: Alert
      labels: {category: availability}
      page_alert:
        labels: {severity: page}
      ticket_alert:
        disable: true
"#;

    #[test]
    fn loads_prometheus_v1() {
        let (docs, errors) = parse_str(PROM, None);
        assert!(errors.is_empty(), "{errors:?}");
        let slo = &docs[0].slos[0];
        assert_eq!(slo.id, "svc-req");
        assert_eq!(slo.objective, 99.9);
        assert_eq!(slo.labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(slo.labels.get("tier").map(String::as_str), Some("2"));
        assert_eq!(slo.page_alert.name, "Alert");
        assert_eq!(slo.page_alert.labels.len(), 2);
        assert!(slo.ticket_alert.disable);
        assert!(matches!(slo.sli, Sli::Events { .. }));
        let (path, pos) = &slo.fields.entries[&Field::Objective];
        assert_eq!(path, "slos[0].objective");
        assert_eq!(pos.map(|p| p.0), Some(6));
    }

    #[test]
    fn splits_documents_and_keeps_line_numbers() {
        let text = format!(
            "# header\n---\n{PROM}---\n# only a comment\n---\n{}",
            PROM.replace("99.9", "oops")
        );
        let (docs, errors) = parse_str(&text, Some(Path::new("f.yml")));
        assert_eq!(docs.len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!(e.origin.document, 2);
        // The second spec starts on line 24; `objective` is its 6th line.
        assert_eq!(e.origin.line, Some(29), "{e}");
        assert!(e.to_string().starts_with("f.yml:29:"), "{e}");
    }

    #[test]
    fn unknown_versions_are_rejected_with_what_was_found() {
        let (_, errors) = parse_str("version: prometheus/v999\nservice: x\n", None);
        assert!(
            matches!(&errors[0].kind, SpecErrorKind::UnknownFormat(f) if f.contains("prometheus/v999"))
        );
        let (_, errors) = parse_str("- a\n- b\n", None);
        assert!(matches!(&errors[0].kind, SpecErrorKind::Yaml(_)));
        let (_, errors) = parse_str("", None);
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn plugins_are_refused_clearly() {
        let text = PROM.replace(
            "    sli:\n      events:",
            "    sli:\n      plugin: {id: x}\n      events:",
        );
        let (_, errors) = parse_str(&text, None);
        assert!(
            matches!(&errors[0].kind, SpecErrorKind::Unsupported(_)),
            "{errors:?}"
        );
    }

    /// The errors `generate_document` gives for `text` (one document).
    fn generation_errors(text: &str, opts: &crate::generate::Options) -> Vec<SpecError> {
        let (docs, errors) = parse_str(text, Some(Path::new("s.yml")));
        assert!(errors.is_empty(), "{errors:?}");
        match crate::generate::generate_document(&docs[0], opts) {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    #[test]
    fn label_keys_that_are_not_prometheus_label_names_are_refused_where_written() {
        // Two SLOs: the spec-level label must be reported once.
        let second = PROM
            .lines()
            .skip_while(|l| !l.starts_with("  - name"))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("name: \"req\"", "name: \"req2\"");
        let text = format!("{PROM}{second}\n")
            .replacen("labels: {team: a}", "labels: {team: a, ow-ner: x}", 1)
            .replacen(
                "labels: {tier: \"2\"}",
                "labels: {tier: \"2\", bad.key: y}",
                1,
            )
            .replacen(
                "labels: {category: availability}",
                "labels: {category: availability, __meta_ok: z}\n      annotations: {run-book: u}",
                1,
            )
            .replacen("labels: {severity: page}", "labels: {sev-erity: page}", 1);
        let errors = generation_errors(&text, &crate::generate::Options::default());
        let text_of = |needle: &str| -> Vec<String> {
            errors
                .iter()
                .map(ToString::to_string)
                .filter(|e| e.contains(needle))
                .collect()
        };
        let spec_level = text_of("\"ow-ner\"");
        assert_eq!(spec_level.len(), 1, "{errors:#?}");
        // File, line of the top-level `labels`, the field, the key, no SLO.
        assert!(
            spec_level[0].starts_with("s.yml:3:")
                && spec_level[0].contains("field `labels`")
                && !spec_level[0].contains("SLO \"")
                && spec_level[0].contains("\"ow_ner\""),
            "{}",
            spec_level[0]
        );
        let slo_level = text_of("\"bad.key\"");
        assert_eq!(slo_level.len(), 1, "{errors:#?}");
        assert!(
            slo_level[0].contains("SLO \"req\"") && slo_level[0].contains("slos[0].labels"),
            "{}",
            slo_level[0]
        );
        let alert = text_of("\"sev-erity\"");
        assert_eq!(alert.len(), 1, "{errors:#?}");
        assert!(alert[0].contains("page alert"), "{}", alert[0]);
        // The annotation reaches both alerts of the first SLO.
        let annotation = text_of("\"run-book\"");
        assert_eq!(annotation.len(), 1, "{errors:#?}");
        assert!(annotation[0].contains("annotation"), "{}", annotation[0]);
        // `__`-prefixed names other than __name__ pass, as in Sloth.
        assert!(text_of("__meta_ok").is_empty(), "{errors:#?}");
        assert_eq!(errors.len(), 4, "{errors:#?}");
    }

    #[test]
    fn a_bad_extra_label_is_reported_once_as_an_extra_label() {
        let opts = crate::generate::Options {
            extra_labels: BTreeMap::from([("bad-key".to_string(), "x".to_string())]),
            ..crate::generate::Options::default()
        };
        let errors = generation_errors(PROM, &opts);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = errors[0].to_string();
        assert!(
            e.starts_with("s.yml: document 1: field `extra labels`: invalid extra label:")
                && e.contains("\"bad-key\""),
            "{e}"
        );
    }

    #[test]
    fn openslo_targets_out_of_range_are_reported_as_written() {
        let text = |target: &str| {
            format!(
                "apiVersion: openslo/v1alpha\nkind: SLO\nmetadata:\n  name: avail\nspec:\n  service: svc\n  objectives:\n    - ratioMetrics:\n        good: {{source: prometheus, queryType: promql, query: \"sum(rate(a[{{{{.window}}}}]))\"}}\n        total: {{source: prometheus, queryType: promql, query: \"sum(rate(b[{{{{.window}}}}]))\"}}\n      target: {target}\n"
            )
        };
        let (docs, errors) = parse_str(&text("0.999"), None);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(docs[0].slos[0].objective, 99.9);
        for (target, shown) in [
            ("1.5", "1.5"),
            ("0", "0"),
            ("-0.5", "-0.5"),
            ("99.9", "99.9"),
        ] {
            let (_, errors) = parse_str(&text(target), Some(Path::new("o.yml")));
            assert_eq!(errors.len(), 1, "{target}: {errors:?}");
            let e = errors[0].to_string();
            assert!(
                e.contains(&format!("target {shown} must be a ratio in (0, 1]"))
                    && e.contains("spec.objectives[0].target")
                    && e.starts_with("o.yml:11:"),
                "{e}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(42), ..ProptestConfig::default() })]

        /// Arbitrary text never panics the loader.
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = parse_str(&s, None);
        }

        /// Mutations of a valid spec (a byte cut, a line dropped, a
        /// character inserted) never panic and either load or say where.
        #[test]
        fn mutated_specs_never_panic(cut in 0usize..PROM.len(), drop_line in 0usize..20, ins in "[-:{}\\[\\]#&*!|>'\"%@ \\n]") {
            let truncated: String = PROM.chars().take(cut).collect();
            let _ = parse_str(&truncated, None);
            let dropped: Vec<&str> = PROM.lines().enumerate().filter(|(i, _)| *i != drop_line).map(|(_, l)| l).collect();
            let _ = parse_str(&dropped.join("\n"), None);
            let mut inserted = PROM.to_string();
            let at = PROM.char_indices().nth(cut).map(|(i, _)| i).unwrap_or(0);
            inserted.insert_str(at, &ins);
            let (docs, errors) = parse_str(&inserted, None);
            prop_assert!(!docs.is_empty() || !errors.is_empty());
        }
    }
}
