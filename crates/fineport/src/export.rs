//! `fineport export`: the client that makes big exports boring (SPEC §5.3).
//! This file turns flags into an [`ExportSpec`]; the engine is
//! `fineport_client::export`.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use clap::{Args, ValueEnum};
use fineport_client::export::parts::Compression;
use fineport_client::export::{self, ExportError, ExportSpec, Output, What};
use fineport_client::retry::RetryPolicy;
use fineport_client::AdminClient;
use fineport_contract::export::Selection;
use fineport_contract::time::{parse_date, parse_timezone, today_in};

const EXAMPLES: &str = "\
Examples:
  # November, one CSV with one header, from a local fineport:
  fineport export --service demo --from 2026-11-01 --to 2026-11-30 -o november.csv

  # The last 7 whole days from DFINERY, gzipped; the timezone is the service's:
  FINEPORT_EXPORT_TOKEN=… fineport export --base-url https://openapi.dfinery.ai \\
      --service abc123 --timezone Asia/Seoul --last 7d --gzip -o week.csv.gz

  # Two events and three properties, one file per day (a daily cron fetches only new days):
  fineport export --service demo --timezone Asia/Seoul --last 30d --events df_purchase,df_refund \\
      --properties df_order_id,df_total_purchase_amount,df_items --split daily -o exports/

  # User profiles of an audience, with df_external_id, to stdout:
  fineport export --service demo --profiles --audience vipxyz --external-id -o - | head

Interrupted or failed? Run the same command again: finished days are kept beside the
output (<output>.parts/) and only the missing ones are fetched. The output is written
under a temporary name and renamed, so it is never half-written.
Exit codes: 0 done; 1 failed or refused by the server, e.g. an unknown name (days done so far
are kept); 2 bad arguments; 130 interrupted.";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct ExportArgs {
    /// Base URL of the Export API: a fineport server, or https://openapi.dfinery.ai.
    #[arg(long, alias = "url", env = "FINEPORT_URL", default_value = fineport_client::DEFAULT_URL)]
    base_url: String,
    /// Service id.
    #[arg(long, env = "FINEPORT_SERVICE")]
    service: String,
    /// The service's export token (`Authorization: Bearer`).
    #[arg(long, env = "FINEPORT_EXPORT_TOKEN", hide_env_values = true)]
    export_token: String,
    /// fineport's admin token, to read the service's timezone, look-back and
    /// limits (fineport only; give --timezone against DFINERY).
    #[arg(long, env = "FINEPORT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,

    /// First day, yyyy-MM-dd (a calendar day of the service's timezone).
    #[arg(long, requires = "to", conflicts_with_all = ["last", "profiles"])]
    from: Option<String>,
    /// Last day, inclusive, yyyy-MM-dd.
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// The last N whole days, ending yesterday in the service's timezone: `7d`.
    #[arg(long, value_name = "Nd", conflicts_with = "profiles")]
    last: Option<String>,
    /// The service's IANA timezone (e.g. Asia/Seoul); read from fineport
    /// with --admin-token. Needed for --last, and to know which days are over.
    #[arg(long)]
    timezone: Option<String>,

    /// Only these events (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "exclude_events")]
    events: Vec<String>,
    /// Every event but these.
    #[arg(long, value_delimiter = ',')]
    exclude_events: Vec<String>,
    /// Only these property columns (`df_items` = every item column,
    /// `df_items_<prop>` = one).
    #[arg(long, value_delimiter = ',', conflicts_with = "exclude_properties")]
    properties: Vec<String>,
    /// Every property column but these.
    #[arg(long, value_delimiter = ',')]
    exclude_properties: Vec<String>,

    /// Export user profiles instead of events (one request, no dates).
    #[arg(long, conflicts_with_all = ["events", "exclude_events"])]
    profiles: bool,
    /// Only the users of this audience (with --profiles).
    #[arg(long, requires = "profiles")]
    audience: Option<String>,
    /// Add the df_external_id column (with --profiles).
    #[arg(long, requires = "profiles")]
    external_id: bool,

    /// Output file, `-` for stdout, or a directory with --split daily.
    /// Default: <service>_events_<from>_<to>.csv, or
    /// <service>_userprofile_<today>.csv, as the server names them.
    #[arg(short, long)]
    output: Option<String>,
    /// `daily`: one file per day in the --output directory.
    #[arg(long, value_enum, default_value_t = Split::None)]
    split: Split,
    /// Compress the output with gzip.
    #[arg(long, conflicts_with = "zstd")]
    gzip: bool,
    /// Compress the output with zstd.
    #[arg(long)]
    zstd: bool,
    /// Overwrite an existing output file.
    #[arg(long)]
    force: bool,

    /// Requests at once (default: the service's export concurrency, 5 on DFINERY).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Export calls per hour, for the time estimate (default: the service's, 100 on DFINERY).
    #[arg(long)]
    per_hour: Option<u32>,
    /// Retries of a day after 5xx answers and broken streams.
    #[arg(long, default_value_t = 8)]
    retries: u32,
    /// Plain log lines instead of a progress bar.
    #[arg(long)]
    plain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Split {
    None,
    Daily,
}

/// What fineport's admin API says of the service.
#[derive(Debug, Default)]
struct ServiceInfo {
    timezone: Option<Tz>,
    lookback_days: Option<u32>,
    per_hour: Option<u32>,
    concurrency: Option<usize>,
}

async fn service_info(args: &ExportArgs) -> anyhow::Result<ServiceInfo> {
    let Some(token) = args.admin_token.as_deref().filter(|t| !t.is_empty()) else {
        return Ok(ServiceInfo::default());
    };
    let admin = AdminClient::new(&args.base_url, token)?;
    // Best effort: the target may be DFINERY (no admin API), or the token
    // may come from the environment for another server. The flags say the
    // rest (--timezone; --last without a timezone is an error below).
    let service = match admin.get_service(&args.service).await {
        Ok(service) => service,
        Err(e) => {
            eprintln!(
                "note: could not read service {} from fineport's admin API ({}); going on without its timezone, look-back and limits",
                args.service,
                format!("{e:#}").lines().next().unwrap_or_default()
            );
            return Ok(ServiceInfo::default());
        }
    };
    let limits = &service["limits"];
    Ok(ServiceInfo {
        timezone: service["timezone"].as_str().and_then(parse_timezone),
        lookback_days: service["export_lookback_days"].as_u64().map(|d| d as u32),
        per_hour: limits["export_per_hour"].as_u64().map(|n| n as u32),
        concurrency: limits["export_concurrency"].as_u64().map(|n| n as usize),
    })
}

fn selection(include: &[String], exclude: &[String]) -> Selection {
    match (include.is_empty(), exclude.is_empty()) {
        (false, _) => Selection::Include(include.to_vec()),
        (true, false) => Selection::Exclude(exclude.to_vec()),
        (true, true) => Selection::All,
    }
}

fn date(flag: &str, s: &str) -> anyhow::Result<NaiveDate> {
    parse_date(s).ok_or_else(|| anyhow::anyhow!("--{flag} {s:?} is not a yyyy-MM-dd date"))
}

/// Builds the spec from the flags and what the admin API said.
fn spec(args: &ExportArgs, info: ServiceInfo) -> anyhow::Result<ExportSpec> {
    let timezone = match &args.timezone {
        Some(name) => Some(
            parse_timezone(name)
                .ok_or_else(|| anyhow::anyhow!("unknown timezone {name:?} (an IANA name such as Asia/Seoul)"))?,
        ),
        None => info.timezone,
    };
    let properties = selection(&args.properties, &args.exclude_properties);
    let what = if args.profiles {
        What::Profiles {
            properties,
            audience: args.audience.clone(),
            external_id: args.external_id,
        }
    } else {
        let (from, to) = match (&args.from, &args.to, &args.last) {
            (Some(from), Some(to), None) => (date("from", from)?, date("to", to)?),
            (None, None, Some(last)) => {
                let n: i64 = last
                    .strip_suffix('d')
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| anyhow::anyhow!("--last {last:?}: expected a number of days such as 7d"))?;
                let tz = timezone.ok_or_else(|| {
                    anyhow::anyhow!("--last needs the service's timezone: pass --timezone (e.g. Asia/Seoul), or --admin-token so fineport's admin API tells it")
                })?;
                let yesterday = today_in(tz, Utc::now()) - Duration::days(1);
                (yesterday - Duration::days(n - 1), yesterday)
            }
            _ => anyhow::bail!("give the range: --from and --to, or --last (or --profiles)"),
        };
        if from > to {
            anyhow::bail!("--from {from} is after --to {to}");
        }
        if let (Some(tz), Some(days)) = (timezone, info.lookback_days.filter(|d| *d > 0)) {
            let oldest = today_in(tz, Utc::now()) - Duration::days(i64::from(days));
            if from < oldest {
                anyhow::bail!(
                    "--from {from} is older than the service's look-back of {days} days: the oldest day it exports is {oldest} ({tz})"
                );
            }
        }
        What::Events {
            events: selection(&args.events, &args.exclude_events),
            properties,
            from,
            to,
        }
    };
    let compression = match (args.gzip, args.zstd) {
        (true, _) => Compression::Gzip,
        (_, true) => Compression::Zstd,
        _ => Compression::None,
    };
    let default_name = || match &what {
        What::Events { from, to, .. } => format!("{}_events_{from}_{to}{}", args.service, compression.suffix()),
        What::Profiles { .. } => {
            // The server's own file name (Content-Disposition).
            let today = today_in(timezone.unwrap_or(chrono_tz::UTC), Utc::now());
            format!("{}_userprofile_{today}{}", args.service, compression.suffix())
        }
    };
    let output = match (args.split, args.output.as_deref()) {
        (Split::Daily, Some("-")) => anyhow::bail!("--split daily writes files: give a directory as --output"),
        (Split::Daily, _) if args.profiles => anyhow::bail!("--split daily is for events"),
        (Split::Daily, dir) => Output::Daily(PathBuf::from(dir.unwrap_or("."))),
        (Split::None, Some("-")) => Output::Stdout,
        (Split::None, Some(path)) => {
            if compression != Compression::None && !path.ends_with(compression.suffix()) {
                eprintln!(
                    "note: {path} will hold {} data (its name does not end in {})",
                    if compression == Compression::Gzip {
                        "gzip"
                    } else {
                        "zstd"
                    },
                    compression.suffix()
                );
            }
            Output::File(PathBuf::from(path))
        }
        (Split::None, None) => Output::File(PathBuf::from(default_name())),
    };
    let limit = info.concurrency.unwrap_or(5);
    let concurrency = match args.concurrency {
        Some(n) if n > limit && info.concurrency.is_some() => {
            eprintln!("note: the service allows {limit} exports at once; using {limit}, not {n}");
            limit
        }
        Some(n) => n.max(1),
        None => limit,
    };
    Ok(ExportSpec {
        base_url: fineport_client::http::base_url(&args.base_url)?,
        service_id: args.service.clone(),
        token: args.export_token.clone(),
        what,
        timezone,
        concurrency,
        per_hour: args.per_hour.or(info.per_hour).unwrap_or(100),
        retry: RetryPolicy {
            max_retries: args.retries,
            ..RetryPolicy::default()
        },
        output,
        compression,
        force: args.force,
        plain: args.plain,
    })
}

/// Runs `fineport export`; see [`EXAMPLES`] for the exit codes.
pub async fn run(args: ExportArgs) -> ExitCode {
    let spec = match service_info(&args).await.and_then(|info| spec(&args, info)) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    tokio::select! {
        result = export::run(&spec) => match result {
            Ok(summary) => {
                eprint!("{}", summary.table());
                ExitCode::SUCCESS
            }
            Err(e) => {
                match &e {
                    ExportError::Other(e) => eprintln!("error: {e:#}"),
                    e => eprintln!("error: {e}"),
                }
                ExitCode::FAILURE
            }
        },
        _ = tokio::signal::ctrl_c() => {
            if spec.output == Output::Stdout {
                eprintln!("\ninterrupted: nothing was written to stdout (a run to stdout does not resume)");
            } else {
                eprintln!("\ninterrupted: the days finished so far are kept; run the same command again to resume (no output was written)");
            }
            ExitCode::from(130)
        }
    }
}
