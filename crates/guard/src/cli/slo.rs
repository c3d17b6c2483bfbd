//! `guard slo generate` and `guard slo validate`: Sloth-compatible SLO specs
//! to Prometheus rules, with Sloth's own flags, so existing Sloth users can
//! swap the binary and keep their specs, scripts and dashboards.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use slo::PromDuration;
use slo::generate::{Options, generate_document};
use slo::spec::{SpecError, SpecErrorKind, load_file, spec_files};
use slo::windows::Catalog;

/// `guard slo <command>`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: SloCommand,
}

/// The SLO subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SloCommand {
    /// Generate Prometheus rules from Sloth SLO specs, exactly as Sloth v0.16:
    /// SLI recording rules per window, metadata rules, and multiwindow
    /// multi-burn-rate page and ticket alerts. Reads `prometheus/v1`,
    /// Kubernetes `PrometheusServiceLevel` (written as `PrometheusRule`
    /// objects) and OpenSLO `v1alpha` specs. Nothing is written unless every
    /// spec is valid.
    Generate(GenerateArgs),
    /// Validate Sloth SLO specs (a file or a directory, recursively): Sloth's
    /// rules plus a PromQL parse of every query. Prints one message per
    /// invalid file and exits 1 if any is invalid.
    Validate(ValidateArgs),
}

/// Flags shared by both commands (Sloth's names).
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// Extra labels added to every generated rule, `key=value`; repeatable.
    /// They override the spec's labels of the same name.
    #[arg(short = 'l', long = "extra-labels", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub extra_labels: Vec<(String, String)>,
    /// SLO period of specs that do not set one (Prometheus duration: 30d, 28d,
    /// 4w); it must have alert windows (built in: 28d, 30d).
    #[arg(long, default_value = "30d", value_name = "DURATION")]
    pub default_slo_period: String,
    /// Directory of Sloth `AlertWindows` files (`apiVersion:
    /// sloth.slok.dev/v1`, `kind: AlertWindows`); replaces the built-in 28d
    /// and 30d windows.
    #[arg(long, value_name = "DIR")]
    pub slo_period_windows_path: Option<PathBuf>,
}

/// Options of `guard slo generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// SLO spec file, or a directory searched recursively for *.yml/*.yaml
    /// (then --out is an existing directory, where the tree is mirrored, or
    /// `-`: every file's rules on standard output, one YAML stream).
    #[arg(short = 'i', long = "input", value_name = "PATH")]
    pub input: PathBuf,
    /// Output file (in an existing directory), or an existing directory
    /// (the rules file takes the input's name there); `-` writes to
    /// standard output.
    #[arg(short = 'o', long = "out", default_value = "-", value_name = "PATH")]
    pub out: PathBuf,
    /// Do not generate the alert rules.
    #[arg(long)]
    pub disable_alerts: bool,
    /// Do not generate the SLI and metadata recording rules.
    #[arg(long)]
    pub disable_recordings: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Options of `guard slo validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// SLO spec file, or a directory searched recursively for *.yml/*.yaml.
    #[arg(short = 'i', long = "input", value_name = "PATH")]
    pub input: PathBuf,
    /// Accept the same SLO (service and name) in several documents or files.
    #[arg(long)]
    pub ignore_slo_duplicates: bool,
    /// Print the result as one JSON object (for scripts) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `KEY=VALUE`, refused here when the rules could not carry it (the same
/// check as spec labels), so a bad flag fails before any spec is read.
fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => {
            slo::validate::check_label(k, v)?;
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!(
            "expected KEY=VALUE (e.g. team=payments), got {s:?}"
        )),
    }
}

/// `1 document`, `2 documents`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Runs `guard slo ...`; the `i32` is the exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    match args.command {
        SloCommand::Generate(a) => generate(a),
        SloCommand::Validate(a) => validate(a),
    }
}

fn options(common: &CommonArgs) -> anyhow::Result<Options> {
    let catalog = match &common.slo_period_windows_path {
        Some(dir) => Catalog::from_dir(dir)
            .with_context(|| format!("loading SLO period windows from {}", dir.display()))?,
        None => Catalog::builtin(),
    };
    let default_period = PromDuration::parse(&common.default_slo_period)
        .with_context(|| format!("--default-slo-period {:?}", common.default_slo_period))?;
    catalog
        .get(default_period)
        .context("--default-slo-period: invalid default SLO period")?;
    Ok(Options {
        catalog,
        default_period,
        extra_labels: common
            .extra_labels
            .iter()
            .cloned()
            .collect::<BTreeMap<_, _>>(),
        ..Options::default()
    })
}

fn print_errors(errors: &[SpecError]) {
    let mut stderr = std::io::stderr().lock();
    for e in errors {
        let _ = writeln!(stderr, "guard slo: error: {e}");
    }
}

/// One output file's content, built entirely before anything is written.
struct Planned {
    out: Option<PathBuf>,
    content: String,
}

fn generate(args: GenerateArgs) -> anyhow::Result<i32> {
    let mut opts = options(&args.common)?;
    opts.disable_alerts = args.disable_alerts;
    opts.disable_recordings = args.disable_recordings;
    let to_stdout = args.out.as_os_str() == "-";

    let input_meta = std::fs::metadata(&args.input)
        .with_context(|| format!("reading input {}", args.input.display()))?;
    // Several spec files into one stream: each document's header names its
    // file, since nothing else in the output says where it came from.
    let name_sources = input_meta.is_dir() && to_stdout;
    let files: Vec<(PathBuf, Option<PathBuf>)> = if input_meta.is_dir() {
        if !to_stdout && !args.out.is_dir() {
            bail!(
                "the input {} is a directory, so --out must be an existing directory or - for standard output (got {})",
                args.input.display(),
                args.out.display()
            );
        }
        if !to_stdout
            && std::fs::canonicalize(&args.input).ok() == std::fs::canonicalize(&args.out).ok()
        {
            bail!(
                "input and output can't be the same directory: {}",
                args.input.display()
            );
        }
        let found = spec_files(&args.input).map_err(|e| anyhow::anyhow!("{e}"))?;
        found
            .into_iter()
            .map(|f| {
                let out = (!to_stdout).then(|| {
                    let rel = f.strip_prefix(&args.input).unwrap_or(&f);
                    args.out.join(rel)
                });
                (f, out)
            })
            .collect()
    } else if to_stdout {
        vec![(args.input.clone(), None)]
    } else if args.out.is_dir() {
        // A file into an existing directory: under the input's own name.
        let name = args.input.file_name().unwrap_or(args.input.as_os_str());
        vec![(args.input.clone(), Some(args.out.join(name)))]
    } else {
        // As Sloth (which creates the file, not its directories): a missing
        // directory is more often a typo than a wish for a new tree.
        let parent = match args.out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            bail!(
                "cannot write {}: the directory {} does not exist (create it first)",
                args.out.display(),
                parent.display()
            );
        }
        vec![(args.input.clone(), Some(args.out.clone()))]
    };

    let mut errors = Vec::new();
    let mut planned = Vec::with_capacity(files.len());
    let (mut n_docs, mut n_slos, mut n_groups) = (0usize, 0usize, 0usize);
    for (file, out) in files {
        let (docs, load_errors) = load_file(&file);
        errors.extend(load_errors);
        let mut content = String::new();
        let source = name_sources.then(|| file.display().to_string());
        for doc in &docs {
            match generate_document(doc, &opts) {
                Ok(generated) => {
                    n_docs += 1;
                    n_slos += generated.slos;
                    n_groups += generated.groups.len();
                    if let Err(e) =
                        slo::output::render_from(&generated, source.as_deref(), &mut content)
                    {
                        errors.push(SpecError {
                            origin: slo::spec::Origin {
                                file: Some(file.clone()),
                                document: doc.document,
                                ..Default::default()
                            },
                            kind: SpecErrorKind::Invalid(e.to_string()),
                        });
                    }
                }
                Err(e) => errors.extend(e),
            }
        }
        planned.push(Planned { out, content });
    }
    if !errors.is_empty() {
        print_errors(&errors);
        eprintln!(
            "guard slo: {} found; nothing was written",
            count(errors.len(), "problem", "problems")
        );
        return Ok(1);
    }

    for p in &planned {
        match &p.out {
            None => {
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(p.content.as_bytes())
                    .and_then(|()| stdout.flush())
                    .context("writing rules to standard output")?;
            }
            Some(path) => {
                // Directory mode mirrors the input tree under the existing
                // --out directory: its subdirectories are ours to create.
                if input_meta.is_dir()
                    && let Some(dir) = path.parent()
                {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                write_atomically(path, &p.content)?
            }
        }
    }
    if !to_stdout {
        eprintln!(
            "guard slo: generated {} for {} from {} into {}",
            count(n_groups, "rule group", "rule groups"),
            count(n_slos, "SLO", "SLOs"),
            count(n_docs, "spec document", "spec documents"),
            args.out.display()
        );
    }
    Ok(0)
}

/// Writes `content` to a temporary file beside `path`, then renames it over
/// `path`, so a reader never sees a half-written rules file.
fn write_atomically(path: &Path, content: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("replacing {}", path.display())
    })
}

/// The result of validating one file.
#[derive(Debug, serde::Serialize)]
struct FileReport {
    file: String,
    documents: usize,
    slos: usize,
    errors: Vec<ErrorReport>,
}

#[derive(Debug, serde::Serialize)]
struct ErrorReport {
    message: String,
    document: usize,
    slo: Option<String>,
    field: Option<String>,
    line: Option<u64>,
    column: Option<u64>,
}

impl From<&SpecError> for ErrorReport {
    fn from(e: &SpecError) -> Self {
        Self {
            message: e.kind.to_string(),
            document: e.origin.document,
            slo: e.origin.slo.clone(),
            field: e.origin.field.clone(),
            line: e.origin.line,
            column: e.origin.column,
        }
    }
}

fn validate(args: ValidateArgs) -> anyhow::Result<i32> {
    let opts = options(&args.common)?;
    let files = match spec_files(&args.input) {
        Ok(f) => f,
        Err(e) => {
            if args.json {
                // Scripts read standard output: the failure is a report too.
                let report = FileReport {
                    file: args.input.display().to_string(),
                    documents: 0,
                    slos: 0,
                    errors: vec![ErrorReport::from(&*e)],
                };
                println!("{}", serde_json::json!({"valid": false, "files": [report]}));
            }
            print_errors(&[*e]);
            return Ok(1);
        }
    };
    // SLO ID -> where it was first defined, across the whole input.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut reports = Vec::with_capacity(files.len());
    let mut all_errors: Vec<Vec<SpecError>> = Vec::with_capacity(files.len());
    for file in &files {
        let (docs, mut errors) = load_file(file);
        let mut slos = 0;
        for doc in &docs {
            match generate_document(doc, &opts) {
                Ok(g) => slos += g.slos,
                Err(e) => errors.extend(e),
            }
            if args.ignore_slo_duplicates {
                continue;
            }
            for s in &doc.slos {
                let here = format!("{} document {}", file.display(), doc.document);
                if let Some(first) = seen.get(&s.id) {
                    errors.push(SpecError {
                        origin: slo::spec::Origin {
                            file: Some(file.clone()),
                            document: doc.document,
                            slo: Some(s.name.clone()),
                            ..Default::default()
                        },
                        kind: SpecErrorKind::Duplicate {
                            id: s.id.clone(),
                            first: first.clone(),
                        },
                    });
                } else {
                    seen.insert(s.id.clone(), here);
                }
            }
        }
        reports.push(FileReport {
            file: file.display().to_string(),
            documents: docs.len(),
            slos,
            errors: errors.iter().map(ErrorReport::from).collect(),
        });
        all_errors.push(errors);
    }

    let invalid = reports.iter().filter(|r| !r.errors.is_empty()).count();
    if args.json {
        let out = serde_json::json!({
            "valid": invalid == 0,
            "files": reports,
        });
        outln!("{out}");
    } else {
        // The result on standard output, the problems on standard error.
        let mut stdout = std::io::stdout().lock();
        let mut stderr = std::io::stderr().lock();
        for (report, errors) in reports.iter().zip(&all_errors) {
            if errors.is_empty() {
                let _ = writeln!(
                    stdout,
                    "ok: {} ({}, {})",
                    report.file,
                    count(report.documents, "document", "documents"),
                    count(report.slos, "SLO", "SLOs")
                );
            } else {
                // Flushed first, so that on a terminal the lines come in order.
                let _ = stdout.flush();
                let _ = writeln!(
                    stderr,
                    "invalid: {} ({}):",
                    report.file,
                    count(errors.len(), "problem", "problems")
                );
                for e in errors {
                    let _ = writeln!(stderr, "  {e}");
                }
            }
        }
        let _ = writeln!(
            stdout,
            "guard slo validate: {} of {} valid",
            reports.len() - invalid,
            count(reports.len(), "file", "files")
        );
    }
    Ok(if invalid == 0 { 0 } else { 1 })
}
