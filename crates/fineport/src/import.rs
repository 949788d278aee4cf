//! `fineport import`: a thin CLI over [`fineport_client::import`] — flags,
//! the taxonomy (a file or the admin API), the summary and the exit code
//! (0 all stored, 2 some rows rejected, 1 failure).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use fineport_client::import::{self, Format, ImportOptions, Input, Kind};
use fineport_client::retry::RetryPolicy;
use fineport_client::AdminClient;
use fineport_contract::taxonomy::TaxonomyDoc;

const AFTER_HELP: &str = "\
Examples:
  # JSON Lines: one event per line, with the user's identity
  #   {\"identity\":{\"external_id\":\"u1\"},\"event_log_id\":\"…\",\"event_name\":\"df_login\",\"event_datetime\":\"2026-11-25T10:00:00Z\"}
  fineport import --service shop events.jsonl

  # An event export (fineport's or DFINERY's CSV) loaded into a service; the
  # admin token reads the target's taxonomy to type the cells
  fineport import --service shop --admin-token \"$FINEPORT_ADMIN_TOKEN\" shop_events_2026-11-01_2026-11-30.csv

  # The same with the taxonomy from a file, reading standard input
  fineport admin taxonomy show shop > taxonomy.json
  zcat events.csv.gz | fineport import --service shop --taxonomy taxonomy.json --format csv -

  # User profiles (a profile export, or {\"identity\":{…},\"user_properties\":{…}} lines)
  fineport import --service shop --profiles --admin-token \"$FINEPORT_ADMIN_TOKEN\" shop_userprofile.csv

Events go to /api/v1/events in requests of one user's events (at most 100
events and 100 items each); each profile is one /api/v1/user-profile request.
50000 answers and broken connections are retried with backoff; 40401 (the
per-minute limit) is waited out; rows the server refuses (40001) are written
to the rejects file with its reason, and the rest is sent.

Re-running an import is safe: event_log_id makes a resent event stored once,
so there is no resume file: after a failure, run the same command again.

Exit status: 0 every row stored, 2 some rows rejected (see the rejects file),
1 the import failed or stopped (bad token, unknown service, server down).";

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Csv,
    Jsonl,
}

#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct ImportArgs {
    /// Files to send, in order (`-` = standard input, with --format).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Base URL of the server (fineport, or DFINERY's Open API).
    #[arg(long, env = "FINEPORT_URL", default_value = fineport_client::DEFAULT_URL)]
    base_url: String,
    /// The service id.
    #[arg(long, env = "FINEPORT_SERVICE")]
    service: String,
    /// The service's import token (header access_token).
    #[arg(long, env = "FINEPORT_IMPORT_TOKEN", hide_env_values = true)]
    import_token: String,
    /// The files are user profiles (sent to /api/v1/user-profile), not events.
    #[arg(long)]
    profiles: bool,
    /// The files' format (default: from the extension: .csv, .jsonl/.ndjson/.json).
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// The target's taxonomy as `fineport admin taxonomy show` prints it
    /// (GET /admin/v1/services/{id}/taxonomy); CSV needs it for the cell
    /// types. Used instead of --admin-token when both are given.
    #[arg(long, value_name = "FILE")]
    taxonomy: Option<PathBuf>,
    /// Admin token, to read the target's taxonomy from the server (for CSV).
    #[arg(long, env = "FINEPORT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    /// Where rejected rows go, one JSON object per line
    /// (default: <first file>.rejects.jsonl; removed when nothing is rejected).
    #[arg(long, value_name = "FILE")]
    rejects: Option<PathBuf>,
    /// Retries of one request after 50000, HTTP 5xx or a broken connection.
    #[arg(long, default_value_t = RetryPolicy::default().max_retries)]
    retries: u32,
    /// Plain progress lines instead of a bar, even on a terminal.
    #[arg(long)]
    plain: bool,
}

pub async fn run(args: ImportArgs) -> ExitCode {
    match run_import(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let kind = if args.profiles { Kind::Profiles } else { Kind::Events };
    let mut inputs = Vec::with_capacity(args.files.len());
    for file in &args.files {
        let stdin = file.as_os_str() == "-";
        let format = match (args.format, stdin) {
            (Some(FormatArg::Csv), _) => Format::Csv,
            (Some(FormatArg::Jsonl), _) => Format::Jsonl,
            (None, true) => anyhow::bail!("reading standard input (-) needs --format csv or --format jsonl"),
            (None, false) => Format::from_path(file).with_context(|| {
                format!(
                    "cannot tell the format of {} from its name: pass --format csv or --format jsonl",
                    file.display()
                )
            })?,
        };
        inputs.push(Input {
            path: (!stdin).then(|| file.clone()),
            format,
        });
    }
    let needs_taxonomy = inputs.iter().any(|i| i.format == Format::Csv);
    let taxonomy = match (&args.taxonomy, args.admin_token.as_deref().filter(|t| !t.is_empty())) {
        (Some(path), _) => Some(read_taxonomy(path)?),
        (None, Some(token)) if needs_taxonomy => {
            let admin = AdminClient::new(&args.base_url, token)?;
            let listing = admin.taxonomy(&args.service).await.with_context(|| {
                format!(
                    "cannot read the taxonomy of service {:?} from the admin API",
                    args.service
                )
            })?;
            Some(serde_json::from_value(listing).context("the admin API's taxonomy is not in the expected shape")?)
        }
        _ => None,
    };
    let rejects = args.rejects.clone().unwrap_or_else(|| match &inputs[0].path {
        Some(path) => {
            let mut name = path.clone().into_os_string();
            name.push(".rejects.jsonl");
            PathBuf::from(name)
        }
        None => PathBuf::from("fineport-import.rejects.jsonl"),
    });
    let options = ImportOptions {
        base_url: args.base_url,
        service: args.service,
        token: args.import_token,
        kind,
        inputs,
        taxonomy,
        concurrency: usize::from(args.concurrency),
        retry: RetryPolicy {
            max_retries: args.retries,
            ..RetryPolicy::default()
        },
        rejects,
        plain: args.plain,
        max_rate_wait: Duration::from_secs(120),
    };
    let report = import::run(options).await?;
    eprintln!("{}", report.summary.to_text());
    Ok(match report.failure {
        Some(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        None if report.summary.rejected > 0 => ExitCode::from(2),
        None => ExitCode::SUCCESS,
    })
}

fn read_taxonomy(path: &std::path::Path) -> anyhow::Result<TaxonomyDoc> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a taxonomy as `fineport admin taxonomy show <service>` prints it",
            path.display()
        )
    })
}
