//! `fineport admin …`: a thin client of the admin API (SPEC §5.2). Each
//! command prints the server's JSON answer, pretty-printed, to stdout; a
//! non-2xx answer prints the server's error JSON to stderr and exits with 1.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use fineport_client::{AdminClient, ApiError, LimitSettings, ServiceSettings, TokenKind};
use fineport_contract::taxonomy::{PropertyDef, TaxonomyDoc};
use fineport_contract::types::PropertyType;
use serde_json::Value;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Base URL of the fineport server.
    #[arg(long, global = true, env = "FINEPORT_URL", default_value = fineport_client::DEFAULT_URL)]
    url: String,
    /// The admin token.
    #[arg(long, global = true, env = "FINEPORT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// List, create, show and change services.
    #[command(subcommand)]
    Services(ServicesCommand),
    /// List, reissue or revoke a service's tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Show or extend a service's taxonomy.
    #[command(subcommand)]
    Taxonomy(TaxonomyCommand),
    /// List, create and delete a service's audiences.
    #[command(subcommand)]
    Audiences(AudiencesCommand),
    /// Show a service's request log, newest first.
    Requests {
        /// Service id.
        id: String,
        /// How many entries (server default 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Only the entries with this outcome: a message such as `ok` or
        /// `invalid_parameter`, or an Import API code such as `40001`.
        #[arg(long)]
        outcome: Option<String>,
    },
    /// Requests and exported rows per hour, events stored per day.
    Stats {
        /// Service id.
        id: String,
        /// How many hours, the current one last (1 to 720; server default 48).
        #[arg(long)]
        hours: Option<u32>,
        /// How many days of the service's timezone, today last (1 to 366; server default 30).
        #[arg(long)]
        days: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum ServicesCommand {
    /// List every service.
    List,
    /// Create a service; prints its import and export tokens (shown once).
    Create {
        /// Service id (default: 10 generated lowercase alphanumerics).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Show one service.
    Show {
        /// Service id.
        id: String,
    },
    /// Change a service's settings and limits.
    Update {
        /// Service id.
        id: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(Debug, Args)]
struct SettingsArgs {
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// IANA timezone, e.g. UTC or Asia/Seoul.
    #[arg(long)]
    timezone: Option<String>,
    /// How many days back an export may start (0 = unlimited).
    #[arg(long)]
    lookback_days: Option<u32>,
    /// Register unknown names on first sight (`--auto-register=false` turns it off).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    auto_register: Option<bool>,
    /// Export calls per hour.
    #[arg(long)]
    export_per_hour: Option<u32>,
    /// Exports running at the same time.
    #[arg(long)]
    export_concurrency: Option<u32>,
    /// Imported events per minute.
    #[arg(long)]
    events_per_minute: Option<u64>,
    /// Identity calls per minute.
    #[arg(long)]
    identities_per_minute: Option<u32>,
    /// Profile calls per minute.
    #[arg(long)]
    profiles_per_minute: Option<u32>,
}

impl SettingsArgs {
    fn into_settings(self, service_id: Option<String>) -> ServiceSettings {
        ServiceSettings {
            service_id,
            name: self.name,
            timezone: self.timezone,
            export_lookback_days: self.lookback_days,
            auto_register: self.auto_register,
            limits: LimitSettings {
                export_per_hour: self.export_per_hour,
                export_concurrency: self.export_concurrency,
                events_per_minute: self.events_per_minute,
                identities_per_minute: self.identities_per_minute,
                profiles_per_minute: self.profiles_per_minute,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Import,
    Export,
}

impl From<Kind> for TokenKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Import => TokenKind::Import,
            Kind::Export => TokenKind::Export,
        }
    }
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// List a service's tokens, newest first: id, kind, state, dates and
    /// reason, never a token's value.
    List {
        /// Service id.
        id: String,
    },
    /// Issue a new token; the old one keeps working for 14 days.
    Reissue {
        /// Service id.
        id: String,
        kind: Kind,
        /// Why (at most 500 characters), kept with the new token and shown by `tokens list`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Revoke the current and any previous token of that kind at once.
    Revoke {
        /// Service id.
        id: String,
        kind: Kind,
    },
}

#[derive(Debug, Subcommand)]
enum AudiencesCommand {
    /// List a service's audiences.
    List {
        /// Service id.
        id: String,
    },
    /// Create an audience: a static list (--external-id, repeatable) or a rule (--rule JSON).
    #[command(
        after_help = "Example rule: --rule '{\"all\":[{\"event\":\"df_purchase\",\"min_count\":3,\
\"from_date\":\"2026-11-01\",\"to_date\":\"2026-11-30\"},{\"property\":\"df_membership\",\"equals\":\"gold\"}]}'"
    )]
    Create {
        /// Service id.
        id: String,
        /// The audience's name.
        #[arg(long)]
        name: String,
        /// The audience id (6 lowercase letters or digits; generated when absent).
        #[arg(long = "audience-id")]
        audience_id: Option<String>,
        /// A member's external_id (repeatable).
        #[arg(long = "external-id", value_name = "ID", conflicts_with = "rule")]
        external_ids: Vec<String>,
        /// The rule, as JSON: {"all":[conditions]}.
        #[arg(long, value_name = "JSON")]
        rule: Option<String>,
    },
    /// Delete an audience.
    Delete {
        /// Service id.
        id: String,
        /// Audience id.
        audience_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum TaxonomyCommand {
    /// Show the registered events and properties.
    Show {
        /// Service id.
        id: String,
    },
    /// Register events and properties (idempotent).
    #[command(after_help = "TYPE is one of: String, Long, Double, Boolean, Datetime, Date, \
\"Array of String\", \"Array of Long\", \"Array of Double\" (case-insensitive).\n\
Example: fineport admin taxonomy add shop --event view_banner --event-property banner_id:String \
--event-property 'tags:Array of String' --item-property color:String\n\
Copy a service's taxonomy (e.g. before `fineport import` of its export into another service):\n\
  fineport admin taxonomy show shop > taxonomy.json\n\
  fineport admin taxonomy add shop_copy --from-file taxonomy.json")]
    Add {
        /// Service id.
        id: String,
        /// An event name (repeatable).
        #[arg(long = "event", value_name = "NAME")]
        events: Vec<String>,
        /// An event property (repeatable).
        #[arg(long = "event-property", value_name = "NAME:TYPE", value_parser = parse_property)]
        event_properties: Vec<PropertyDef>,
        /// An item property, inside df_items (repeatable).
        #[arg(long = "item-property", value_name = "NAME:TYPE", value_parser = parse_property)]
        item_properties: Vec<PropertyDef>,
        /// A user property (repeatable).
        #[arg(long = "user-property", value_name = "NAME:TYPE", value_parser = parse_property)]
        user_properties: Vec<PropertyDef>,
        /// A taxonomy as `taxonomy show` prints it (the admin API's JSON),
        /// added together with the flags.
        #[arg(long, value_name = "FILE")]
        from_file: Option<std::path::PathBuf>,
    },
}

/// Parses `NAME:TYPE`, the type spelled as in the SPEC (any case).
fn parse_property(s: &str) -> Result<PropertyDef, String> {
    let (name, ty) = s
        .split_once(':')
        .ok_or_else(|| format!("expected NAME:TYPE, got {s:?}"))?;
    let (name, ty) = (name.trim(), ty.trim());
    if name.is_empty() {
        return Err(format!("expected NAME:TYPE, got {s:?}"));
    }
    let ty = PropertyType::ALL
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(ty))
        .ok_or_else(|| {
            let names: Vec<&str> = PropertyType::ALL.iter().map(|t| t.as_str()).collect();
            format!("unknown type {ty:?}; use one of: {}", names.join(", "))
        })?;
    Ok(PropertyDef {
        name: name.to_owned(),
        ty,
    })
}

pub async fn run(args: AdminArgs) -> ExitCode {
    let Some(token) = args.admin_token.filter(|t| !t.is_empty()) else {
        eprintln!("error: the admin token is required: pass --admin-token or set FINEPORT_ADMIN_TOKEN");
        return ExitCode::from(2);
    };
    let client = match AdminClient::new(&args.url, token) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match call(&client, args.command).await {
        Ok(answer) => {
            // A closed pipe (`| head`) is not an error of ours.
            let _ = writeln!(std::io::stdout(), "{}", pretty(&answer));
            ExitCode::SUCCESS
        }
        Err(e) => {
            match e.downcast_ref::<ApiError>() {
                Some(api) => match api.json() {
                    Some(json) => eprintln!("{}", pretty(&json)),
                    None => eprintln!("error: {api}"),
                },
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn pretty(json: &Value) -> String {
    serde_json::to_string_pretty(json).unwrap_or_else(|_| json.to_string())
}

async fn call(client: &AdminClient, command: AdminCommand) -> anyhow::Result<Value> {
    match command {
        AdminCommand::Services(c) => match c {
            ServicesCommand::List => client.list_services().await,
            ServicesCommand::Create { id, settings } => client.create_service(&settings.into_settings(id)).await,
            ServicesCommand::Show { id } => client.get_service(&id).await,
            ServicesCommand::Update { id, settings } => client.update_service(&id, &settings.into_settings(None)).await,
        },
        AdminCommand::Tokens(c) => match c {
            TokensCommand::List { id } => client.tokens(&id).await,
            TokensCommand::Reissue { id, kind, reason } => {
                client.reissue_token(&id, kind.into(), reason.as_deref()).await
            }
            TokensCommand::Revoke { id, kind } => client.revoke_token(&id, kind.into()).await,
        },
        AdminCommand::Taxonomy(c) => match c {
            TaxonomyCommand::Show { id } => client.taxonomy(&id).await,
            TaxonomyCommand::Add {
                id,
                events,
                event_properties,
                item_properties,
                user_properties,
                from_file,
            } => {
                let mut doc = match &from_file {
                    Some(path) => {
                        let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
                        serde_json::from_slice::<TaxonomyDoc>(&text).with_context(|| {
                            format!(
                                "{} is not a taxonomy (the JSON of `fineport admin taxonomy show`)",
                                path.display()
                            )
                        })?
                    }
                    None => TaxonomyDoc::default(),
                };
                doc.events.extend(events);
                doc.event_properties.extend(event_properties);
                doc.item_properties.extend(item_properties);
                doc.user_properties.extend(user_properties);
                if doc.is_empty() {
                    anyhow::bail!(
                        "nothing to add: give --event, --event-property, --item-property, --user-property or --from-file"
                    );
                }
                client.add_taxonomy(&id, &doc).await
            }
        },
        AdminCommand::Audiences(c) => match c {
            AudiencesCommand::List { id } => client.audiences(&id).await,
            AudiencesCommand::Create {
                id,
                name,
                audience_id,
                external_ids,
                rule,
            } => {
                let mut body = serde_json::json!({ "name": name });
                if let Some(aid) = audience_id {
                    body["id"] = aid.into();
                }
                match rule {
                    Some(rule) => {
                        body["rule"] =
                            serde_json::from_str(&rule).map_err(|e| anyhow::anyhow!("--rule is not JSON: {e}"))?;
                    }
                    None => body["external_ids"] = external_ids.into(),
                }
                client.create_audience(&id, &body).await
            }
            AudiencesCommand::Delete { id, audience_id } => client.delete_audience(&id, &audience_id).await,
        },
        AdminCommand::Requests { id, limit, outcome } => client.requests(&id, limit, outcome.as_deref()).await,
        AdminCommand::Stats { id, hours, days } => client.stats(&id, hours, days).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_and_type() {
        assert_eq!(
            parse_property("price:Long"),
            Ok(PropertyDef {
                name: "price".into(),
                ty: PropertyType::Long
            })
        );
        assert_eq!(
            parse_property("tags:array of string"),
            Ok(PropertyDef {
                name: "tags".into(),
                ty: PropertyType::StringArray
            })
        );
        assert!(parse_property("price").is_err());
        assert!(parse_property(":Long").is_err());
        assert!(parse_property("price:Integer").is_err());
    }
}
