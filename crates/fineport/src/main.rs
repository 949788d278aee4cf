//! `fineport`: the one binary. `fineport serve` runs the server (SPEC §5.1);
//! `fineport admin …` is a thin client of the admin API (SPEC §5.2/5.3);
//! `fineport export` is the client that makes big exports safe (SPEC §5.3);
//! `fineport import` backfills through the Import API (SPEC §4, §5.3);
//! `fineport bench` measures export and import speed (docs/benchmarks.md).
//! Every flag can also be given as a `FINEPORT_*` environment variable.

mod admin;
mod bench;
mod export;
mod import;
mod serve;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the import path allocates parsed
/// events on the HTTP threads and frees them on the writer thread, a
/// pattern glibc serves slowly (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "fineport",
    version,
    about = "A self-hosted, DFINERY-compatible event store",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (Export, Import and admin APIs).
    Serve(serve::ServeArgs),
    /// Manage services, tokens and taxonomies of a running server.
    Admin(admin::AdminArgs),
    /// Export events or profiles to CSV: split into days, 429s waited out,
    /// retried, resumable, verified (fineport or DFINERY).
    Export(export::ExportArgs),
    /// Measure export and import speed beside DuckDB's own CSV export.
    Bench(bench::BenchArgs),
    /// Send CSV exports or JSON Lines of events or profiles to the Import API.
    Import(import::ImportArgs),
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            // PostgreSQL's notices (e.g. "relation … already exists,
            // skipping" from the idempotent migrations) are not news.
            init_logging("info,tokio_postgres=warn");
            match serve::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Admin(args) => {
            init_logging("warn");
            admin::run(args).await
        }
        Command::Export(args) => {
            init_logging("warn");
            export::run(args).await
        }
        Command::Import(args) => {
            init_logging("warn");
            import::run(args).await
        }
        Command::Bench(args) => {
            init_logging("warn");
            match bench::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
