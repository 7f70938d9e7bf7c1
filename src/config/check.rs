//! `collector config check`: validate a configuration exactly as start-up would (without
//! opening the WAL or connecting to Kafka), and print the effective configuration as TOML
//! (every setting of the subcommand, its value, and where it came from), secrets masked.
//!
//! The output is itself a configuration file that loads to the same settings (a unit test
//! proves it): it can be diffed between hosts, or saved as a starting point once its masked
//! secrets are written in again.

use std::fmt::Write as _;

use super::load::{Effective, Origins, Source};
use super::settings::{self, Kind, SECTIONS};
use super::{ConfigAction, ConfigCmd};

pub use super::settings::MASK;

/// The comment column of the printed configuration.
const COMMENT_AT: usize = 48;

/// The outcome of `collector config check`.
#[derive(Debug)]
pub struct Checked {
    /// The effective configuration, as TOML with each setting's source in a comment.
    pub effective: String,
    /// The validation's verdict: `Err` with the message start-up would print.
    pub verdict: Result<(), String>,
}

/// Runs `collector config …`, whose settings and their sources are `origins`.
pub fn run(config: &ConfigCmd, origins: &Origins) -> Checked {
    match &config.action {
        ConfigAction::Check(check) => {
            let effective = render(origins);
            let verdict = match &check.mode {
                Some(mode) => mode.startup().map(|_| ()).map_err(|e| origins.explain(&e)),
                None => Err("no subcommand to check (config::load supplies `run`)".into()),
            };
            Checked { effective, verdict }
        }
    }
}

/// The effective configuration as TOML: one `key = value` line per setting, in the file's
/// sections, each followed by its source (`# default`, `# file`, `# env COLLECTOR_…`,
/// `# flag --…`). A setting without a value is a comment. Secrets are masked.
pub fn render(origins: &Origins) -> String {
    let mut out = String::new();
    let file = origins.file.as_ref().map_or("none".to_string(), |p| p.display().to_string());
    let _ = writeln!(
        out,
        "# The effective configuration of `collector {}`.",
        origins.command.trim_start_matches("config check ")
    );
    let _ = writeln!(out, "# Configuration file: {file}. Precedence: flag > environment > file > default.");
    for (section, _) in SECTIONS {
        let here: Vec<&Effective> = origins
            .settings
            .iter()
            .filter(|e| e.setting.section == *section && e.setting.kind != Kind::Properties)
            .collect();
        if !here.is_empty() {
            if !section.is_empty() {
                let _ = writeln!(out, "\n[{section}]");
            }
            for e in here {
                let line = match value(e) {
                    Some(value) => format!("{} = {value}", e.setting.key),
                    None => format!("# {}: not set", e.setting.key),
                };
                let _ = writeln!(out, "{}", commented(line, &source(e)));
            }
        }
        if let Some(e) =
            origins.settings.iter().find(|e| e.setting.section == *section && e.setting.kind == Kind::Properties)
        {
            let _ = writeln!(out, "\n[kafka.properties]");
            if e.properties.is_empty() {
                let _ = writeln!(out, "# none: librdkafka's defaults and the collector's");
            }
            // The last of one name wins, as in librdkafka; show only that one.
            for (i, (name, value, from)) in e.properties.iter().enumerate() {
                if e.properties[i + 1..].iter().any(|(later, _, _)| later == name) {
                    continue;
                }
                let value = if settings::is_secret(name) { MASK } else { value };
                let from = match from {
                    Source::File => "file".to_string(),
                    _ => source(e),
                };
                let _ = writeln!(out, "{}", commented(format!("{} = {}", quoted(name), quoted(value)), &from));
            }
        }
    }
    out
}

/// `line` with `# comment` in the comment column.
fn commented(line: String, comment: &str) -> String {
    let pad = COMMENT_AT.saturating_sub(line.chars().count()).max(2);
    format!("{line}{}# {comment}", " ".repeat(pad))
}

/// The setting's value as TOML, secrets masked; `None` when it has none (a list has one: `[]`).
fn value(e: &Effective) -> Option<String> {
    (e.setting.kind == Kind::List || !e.values.is_empty()).then(|| e.shown())
}

fn source(e: &Effective) -> String {
    match e.source {
        Source::Flag => format!("flag {}", e.setting.flag),
        Source::Env => format!("env {}", e.setting.env),
        Source::File => "file".into(),
        Source::Default | Source::Unset => "default".into(),
    }
}

/// A TOML basic string (JSON's escapes are a subset of TOML's).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}
