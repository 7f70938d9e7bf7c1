//! Where each setting comes from: a flag, else its environment variable, else the
//! configuration file (`--config`), else the built-in default.
//!
//! clap already ranks flag over variable over default; the file slots in as the default. The
//! command line is parsed once to find `--config` and which settings a flag or variable gives;
//! every other setting the file has becomes its argument's default value, and the command line
//! is parsed again. clap then judges a file's value with the flag's own parser, exactly as if it
//! had been typed. Each file value is also parsed on its own first, so that a bad value names
//! its line and key, even where a flag overrides it. librdkafka's properties are the exception:
//! they merge by property name, file first, so `-X linger.ms=50` does not drop the file's SASL
//! settings.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use thiserror::Error;

use super::file::ConfigFile;
use super::settings::{self, Kind, Setting};
use super::{Cli, Command, ConfigAction, ConfigError};

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
    /// No value anywhere (an optional setting left out, an empty list).
    Unset,
}

/// One setting as the command will run with it.
#[derive(Debug, Clone)]
pub struct Effective {
    pub setting: &'static Setting,
    pub source: Source,
    /// As the flag takes them: one value, or one per element of a list. For
    /// [`Kind::Properties`], see `properties`.
    pub values: Vec<String>,
    /// librdkafka properties: name, value and where each came from, in the order they apply
    /// (a later one of the same name wins).
    pub properties: Vec<(String, String, Source)>,
}

/// Every setting of the subcommand being run, with its value and source.
#[derive(Debug, Clone)]
pub struct Origins {
    /// The subcommand, as typed: `serve`, `config check run`.
    pub command: String,
    /// The configuration file, if one was given.
    pub file: Option<PathBuf>,
    pub settings: Vec<Effective>,
}

/// A parsed and merged command line.
#[derive(Debug)]
pub struct Loaded {
    pub cli: Cli,
    pub origins: Origins,
}

/// Why the command line and file give no configuration.
#[derive(Debug, Error)]
pub enum LoadError {
    /// A bad flag or variable, or `--help` / `--version`: clap says it (and picks the exit code).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The configuration file: unreadable, not TOML, or a setting in it unknown, mistyped or
    /// invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Parses `args` (the program name first) with the environment and the `--config` file.
///
/// # Errors
/// [`LoadError::Cli`] as `Cli::try_parse_from` would give; [`LoadError::Config`] for the file,
/// naming its path, line and setting.
pub fn load<I, T>(args: I) -> Result<Loaded, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let first = Cli::command().try_get_matches_from(&args)?;
    if let Some(("config", config)) = first.subcommand() {
        if let Some(("check", check)) = config.subcommand() {
            if check.subcommand().is_none() {
                // `collector config check` checks `run`, the default subcommand.
                args.push("run".into());
                return load(args);
            }
        }
    }
    let file = first.get_one::<PathBuf>("config").map(|path| ConfigFile::read(path)).transpose()?;
    if let Some(file) = &file {
        check_values(file)?;
    }
    let given = given_by_flag_or_env(&first);
    let mut command = Cli::command();
    if let Some(file) = &file {
        command = with_file_defaults(command, file, &given);
    }
    let matches = command.try_get_matches_from_mut(&args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let (Some(file), Some(kafka)) = (&file, cli.command.kafka_mut()) {
        let from_file = file.properties.iter().map(|(name, value)| format!("{name}={value}"));
        kafka.kafka_properties = from_file.chain(kafka.kafka_properties.drain(..)).collect();
    }
    let origins = Origins::new(&command, &matches, file.as_ref());
    Ok(Loaded { cli, origins })
}

/// Parses each of the file's values with its flag's parser, alone: a bad value is reported
/// with its line even where a flag or variable overrides it.
fn check_values(file: &ConfigFile) -> Result<(), ConfigError> {
    let arguments = settings::arguments();
    for (key, value) in &file.values {
        let setting = settings::all().iter().find(|s| s.key == *key).expect("the file holds known keys only");
        let arg = arguments
            .iter()
            .find(|a| settings::env_of(a).as_deref() == Some(&setting.env))
            .expect("a setting is an argument");
        let long = arg.get_long().expect("every setting has a long flag");
        let alone =
            arg.clone().env(None::<&str>).default_value(None::<&str>).value_delimiter(None::<char>).global(false);
        let mut command = clap::Command::new("collector")
            .no_binary_name(true)
            .disable_help_flag(true)
            .disable_version_flag(true)
            .arg(alone);
        if let Err(e) = command.try_get_matches_from_mut(value.values.iter().map(|v| format!("--{long}={v}"))) {
            return Err(ConfigError::FileSetting {
                path: file.path.clone(),
                line: value.line,
                setting: format!("{} = {}", setting.file_key(), shown(setting, &value.values)),
                problem: clap_problem(&e),
            });
        }
    }
    Ok(())
}

/// clap's message for a bad value, on one line, without the `error:` and the `--help` hint.
fn clap_problem(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let lines: Vec<&str> = rendered
        .lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect();
    lines.join("; ")
}

/// The variables of the settings the parsed command line or the environment gives, in the
/// subcommand being run.
fn given_by_flag_or_env(matches: &ArgMatches) -> BTreeSet<&'static str> {
    let leaf = leaf(matches).1;
    settings::all()
        .iter()
        .filter(|s| leaf.ids().any(|id| id.as_str() == s.id))
        .filter(|s| matches!(leaf.value_source(&s.id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)))
        .map(|s| s.env.as_str())
        .collect()
}

/// `command` with the file's values as defaults, on every subcommand that has the setting.
/// Settings a flag or variable gives keep their built-in default (it goes unused anyway) and
/// their delimiter; the others lose the delimiter, so that a file list's element is never
/// split at a comma.
fn with_file_defaults(mut command: clap::Command, file: &ConfigFile, given: &BTreeSet<&str>) -> clap::Command {
    let ids: Vec<(String, &'static Setting)> = command
        .get_arguments()
        .filter_map(|a| Some((a.get_id().to_string(), settings::by_env(&settings::env_of(a)?)?)))
        .collect();
    for (id, setting) in ids {
        let Some(value) = file.values.get(setting.key) else { continue };
        if given.contains(setting.env.as_str()) {
            continue;
        }
        let values = value.values.clone();
        command = command.mut_arg(id, |arg| arg.default_values(values).value_delimiter(None::<char>));
    }
    let subcommands: Vec<String> = command.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in subcommands {
        command = command.mut_subcommand(name, |sub| with_file_defaults(sub, file, given));
    }
    command
}

/// The subcommand path (`["config", "check", "run"]`) and the innermost matches.
fn leaf(matches: &ArgMatches) -> (Vec<&str>, &ArgMatches) {
    let (mut path, mut at) = (Vec::new(), matches);
    while let Some((name, sub)) = at.subcommand() {
        path.push(name);
        at = sub;
    }
    (path, at)
}

impl Origins {
    /// Every setting of the subcommand `matches` ran (as `command`, built by parsing them).
    fn new(command: &clap::Command, matches: &ArgMatches, file: Option<&ConfigFile>) -> Origins {
        let (path, leaf_matches) = leaf(matches);
        let mut leaf_command = command;
        for name in &path {
            leaf_command = leaf_command.find_subcommand(name).expect("a matched subcommand exists");
        }
        let mut effective = Vec::new();
        for setting in settings::all() {
            let Some(arg) =
                leaf_command.get_arguments().find(|a| settings::env_of(a).as_deref() == Some(setting.env.as_str()))
            else {
                continue;
            };
            let id = arg.get_id().as_str();
            let in_file = file.is_some_and(|f| f.values.contains_key(setting.key));
            let source = match leaf_matches.value_source(id) {
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) => Source::Env,
                Some(ValueSource::DefaultValue) if in_file => Source::File,
                Some(ValueSource::DefaultValue) => Source::Default,
                _ => Source::Unset,
            };
            let values: Vec<String> = leaf_matches
                .get_raw(id)
                .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let mut properties = Vec::new();
            if setting.kind == Kind::Properties {
                let from_file = file.map(|f| f.properties.clone()).unwrap_or_default();
                properties.extend(from_file.into_iter().map(|(k, v)| (k, v, Source::File)));
                properties.extend(values.iter().map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (k.trim().to_string(), v.to_string(), source)
                }));
            }
            let source = match (setting.kind, properties.is_empty(), source) {
                (Kind::Properties, false, Source::Unset) => Source::File,
                _ => source,
            };
            effective.push(Effective { setting, source, values, properties });
        }
        Origins { command: path.join(" "), file: file.map(|f| f.path.clone()), settings: effective }
    }

    /// `error`'s message, followed by the value and source of each setting it names by flag,
    /// one a line: `  --wal-max-mib = 3, from collector.toml: [wal] wal_max_mib`. Secrets are
    /// masked.
    pub fn explain(&self, error: &ConfigError) -> String {
        let message = error.to_string();
        let mut named: Vec<(usize, &Effective)> =
            self.settings.iter().filter_map(|e| mentioned_at(&message, &e.setting.flag).map(|at| (at, e))).collect();
        named.sort_by_key(|(at, _)| *at);
        let mut out = message;
        for (_, e) in named {
            if e.setting.kind != Kind::Properties {
                out.push_str(&format!(
                    "\n  {} = {}, {}",
                    e.setting.flag,
                    e.shown(),
                    self.described(e.source, e.setting)
                ));
                continue;
            }
            if e.properties.is_empty() {
                out.push_str(&format!("\n  {}: no librdkafka property is set", e.setting.flag));
            }
            for (name, value, source) in &e.properties {
                let value = if settings::is_secret(name) { settings::MASK } else { value };
                out.push_str(&format!("\n  {} {name}={value}, {}", e.setting.flag, self.described(*source, e.setting)));
            }
        }
        out
    }

    /// Where a setting's value came from, in words.
    pub fn described(&self, source: Source, setting: &Setting) -> String {
        let file = self.file.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        match source {
            Source::Flag => "from the command line".into(),
            Source::Env => format!("from the environment: {}", setting.env),
            Source::File => format!("from {file}: {}", setting.file_key()),
            Source::Default => "the default".into(),
            Source::Unset => "not set".into(),
        }
    }
}

impl Effective {
    /// The value as TOML would write it, secrets masked: `3`, `"0.0.0.0:8000"`, `["a", "b"]`.
    pub fn shown(&self) -> String {
        shown(self.setting, &self.values)
    }
}

/// Values as TOML would write them, secrets masked.
fn shown(setting: &Setting, values: &[String]) -> String {
    let quoted = |v: &String| {
        let v = if setting.is_secret() { settings::MASK } else { v.as_str() };
        serde_json::to_string(v).expect("a string serializes")
    };
    match setting.kind {
        Kind::List => format!("[{}]", values.iter().map(quoted).collect::<Vec<_>>().join(", ")),
        Kind::Integer => values.join(","),
        Kind::String | Kind::Properties => values.iter().map(quoted).collect::<Vec<_>>().join(","),
    }
}

/// Where `flag` first stands as a whole word in `message`.
fn mentioned_at(message: &str, flag: &str) -> Option<usize> {
    message.match_indices(flag).map(|(at, _)| at).find(|&at| {
        let before = message[..at].chars().next_back();
        let after = message[at + flag.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '-')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '-')
    })
}

impl Command {
    /// The Kafka settings of the subcommand, if it has any.
    fn kafka_mut(&mut self) -> Option<&mut super::KafkaArgs> {
        match self {
            Command::Run(run) => Some(&mut run.serve.kafka),
            Command::Serve(serve) => Some(&mut serve.kafka),
            Command::Transform(transform) => Some(&mut transform.kafka),
            Command::Config(config) => match &mut config.action {
                ConfigAction::Check(check) => check.mode.as_mut().map(|mode| mode.kafka_mut()),
            },
            Command::Wal(_) => None,
        }
    }
}
