//! Reading the configuration file (`--config FILE`): TOML whose sections and keys are the
//! settings of [`super::settings`]. This checks the file's shape (sections, keys, types) and
//! turns every value into the text a flag would carry; the values themselves are judged later
//! by the flags' own parsers (`super::load`), so a file is held to exactly the rules of the
//! command line.
//!
//! Every error names the file, the line, the setting, and what is wrong; an unknown key comes
//! with the nearest known one.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::settings::{self, Kind, Setting, SECTIONS};
use super::ConfigError;

/// A configuration file, read and checked for shape.
#[derive(Debug)]
pub struct ConfigFile {
    pub path: PathBuf,
    /// Each setting's value as flag text (one string, or one per element of an array), by key.
    pub values: BTreeMap<&'static str, FileValue>,
    /// `[kafka.properties]`: name and value, in the file's order.
    pub properties: Vec<(String, String)>,
}

/// One setting's value in the file.
#[derive(Debug, Clone)]
pub struct FileValue {
    pub values: Vec<String>,
    /// 1-based, for messages.
    pub line: usize,
}

impl ConfigFile {
    /// Reads and checks `path`.
    ///
    /// # Errors
    /// [`ConfigError::FileUnreadable`], [`ConfigError::FileSyntax`] (with the line and column),
    /// or [`ConfigError::FileSetting`] for an unknown section or key, or a value of the wrong
    /// type.
    pub fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::FileUnreadable { path: path.to_path_buf(), source })?;
        Self::parse(path, &text)
    }

    /// Checks `text`, read from `path`.
    ///
    /// # Errors
    /// As [`ConfigFile::read`], less the read.
    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
        let table = DeTable::parse(text).map_err(|e| ConfigError::FileSyntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let reader = Reader { path, text };
        let mut file = ConfigFile { path: path.to_path_buf(), values: BTreeMap::new(), properties: Vec::new() };
        for (key, value) in in_file_order(table.get_ref()) {
            let is_section = SECTIONS.iter().any(|(s, _)| !s.is_empty() && *s == key.get_ref());
            match value.get_ref() {
                DeValue::Table(entries) if is_section => {
                    for (key2, value2) in in_file_order(entries) {
                        reader.entry(&mut file, key.get_ref(), key2, value2)?;
                    }
                }
                DeValue::Table(_) => {
                    return Err(reader.error(key.span().start, &format!("[{key}]"), unknown_section(key.get_ref())))
                }
                _ if is_section => {
                    return Err(reader.error(
                        key.span().start,
                        key.get_ref(),
                        format!("is a section; write [{key}] on a line of its own, its settings below it"),
                    ))
                }
                _ => reader.entry(&mut file, "", key, value)?,
            }
        }
        Ok(file)
    }
}

/// The file being read, for positions in messages.
struct Reader<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Reader<'_> {
    /// One `key = value` of `section` (`""` for the top level).
    fn entry(
        &self,
        file: &mut ConfigFile,
        section: &str,
        key: &Spanned<Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
    ) -> Result<(), ConfigError> {
        let at = key.span().start;
        let shown = if section.is_empty() { key.to_string() } else { format!("[{section}] {key}") };
        if section == "kafka" && key.get_ref() == "properties" {
            file.properties = self.properties(value)?;
            return Ok(());
        }
        let setting = match settings::find(section, key.get_ref()) {
            Some(s) if s.kind != Kind::Properties => s,
            _ => return Err(self.error(at, &shown, unknown_key(section, key.get_ref()))),
        };
        let values = self.typed(setting, value).map_err(|problem| self.error(value.span().start, &shown, problem))?;
        file.values.insert(setting.key, FileValue { values, line: self.line(at) });
        Ok(())
    }

    /// The value as flag text, if it has the setting's type.
    fn typed(&self, setting: &Setting, value: &Spanned<DeValue<'_>>) -> Result<Vec<String>, String> {
        let found = type_name(value.get_ref());
        match (setting.kind, value.get_ref()) {
            (Kind::Integer, DeValue::Integer(n)) => Ok(vec![integer(n.as_str(), n.radix())?]),
            (Kind::Integer, DeValue::String(s)) if s.trim().parse::<i128>().is_ok() => {
                Err(format!("expected an integer, found the string \"{s}\"; write it without quotes"))
            }
            (Kind::Integer, _) => Err(format!("expected an integer, found {found}")),
            (Kind::String, DeValue::String(s)) => Ok(vec![s.to_string()]),
            (Kind::String, DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_)) => {
                Err(format!("expected a string, found {found}; write it in quotes"))
            }
            (Kind::String, _) => Err(format!("expected a string, found {found}")),
            (Kind::List, DeValue::Array(items)) => items
                .iter()
                .map(|item| match item.get_ref() {
                    DeValue::String(s) => Ok(s.to_string()),
                    other => Err(format!("expected an array of strings; one element is {}", type_name(other))),
                })
                .collect(),
            (Kind::List, _) => Err(format!(
                "expected an array of strings, e.g. {} = [\"first\", \"second\"]; found {found}",
                setting.key
            )),
            (Kind::Properties, _) => unreachable!("[kafka.properties] is read by `properties`"),
        }
    }

    /// `[kafka.properties]`: librdkafka property names and values (strings, integers or
    /// booleans, as librdkafka takes them all as text).
    fn properties(&self, table: &Spanned<DeValue<'_>>) -> Result<Vec<(String, String)>, ConfigError> {
        let DeValue::Table(entries) = table.get_ref() else {
            return Err(self.error(
                table.span().start,
                "[kafka] properties",
                format!(
                    "expected a table of librdkafka properties, e.g. [kafka.properties] then \"linger.ms\" = 50; found {}",
                    type_name(table.get_ref())
                ),
            ));
        };
        let mut properties = Vec::new();
        for (name, value) in in_file_order(entries) {
            let shown = format!("[kafka.properties] {:?}", name.get_ref());
            if name.get_ref().trim().is_empty() || name.get_ref().contains('=') {
                return Err(self.error(name.span().start, &shown, "is not a librdkafka property name".into()));
            }
            let text = match value.get_ref() {
                DeValue::String(s) => s.to_string(),
                DeValue::Integer(n) => {
                    integer(n.as_str(), n.radix()).map_err(|e| self.error(value.span().start, &shown, e))?
                }
                DeValue::Boolean(b) => b.to_string(),
                other => {
                    return Err(self.error(
                        value.span().start,
                        &shown,
                        format!("expected a string, an integer or a boolean, found {}", type_name(other)),
                    ))
                }
            };
            properties.push((name.get_ref().trim().to_string(), text));
        }
        Ok(properties)
    }

    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    fn error(&self, offset: usize, setting: &str, problem: String) -> ConfigError {
        ConfigError::FileSetting {
            path: self.path.to_path_buf(),
            line: self.line(offset),
            setting: setting.to_string(),
            problem,
        }
    }
}

/// A table's entries in the order the file has them (the parser sorts them by key), so that the
/// first error reported is the first in the file.
fn in_file_order<'t, 'i>(table: &'t DeTable<'i>) -> Vec<(&'t Spanned<Cow<'i, str>>, &'t Spanned<DeValue<'i>>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

/// A TOML integer as decimal text.
fn integer(digits: &str, radix: u32) -> Result<String, String> {
    i128::from_str_radix(digits, radix).map(|n| n.to_string()).map_err(|e| format!("{digits}: {e}"))
}

fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The problem with an unknown key: where it belongs if it is a setting of another section,
/// else the nearest known key of its section, else the section's keys.
fn unknown_key(section: &str, key: &str) -> String {
    if key == settings::PROPERTIES_KEY {
        return "unknown setting; librdkafka properties are the table [kafka.properties], one property a line".into();
    }
    if let Some(elsewhere) = settings::all().iter().find(|s| s.key == key) {
        let place = if elsewhere.section.is_empty() {
            "at the top level, before any [section]".to_string()
        } else {
            format!("in [{}]", elsewhere.section)
        };
        return format!("unknown setting here; {key} belongs {place}");
    }
    let keys: Vec<&str> =
        SECTIONS.iter().find(|(s, _)| *s == section).map(|(_, keys)| keys.to_vec()).unwrap_or_default();
    let keys: Vec<String> = keys
        .iter()
        .map(|k| if *k == settings::PROPERTIES_KEY { "properties".to_string() } else { k.to_string() })
        .collect();
    match nearest(key, settings::all().iter().map(|s| s.key)) {
        Some(near) => {
            let place = settings::all().iter().find(|s| s.key == near).map(|s| s.section).unwrap_or_default();
            if place == section {
                format!("unknown setting; did you mean {near}?")
            } else if place.is_empty() {
                format!("unknown setting; did you mean {near} (at the top level)?")
            } else {
                format!("unknown setting; did you mean {near} (in [{place}])?")
            }
        }
        None => format!("unknown setting; the settings here are: {}", keys.join(", ")),
    }
}

fn unknown_section(name: &str) -> String {
    let sections: Vec<String> = SECTIONS.iter().filter(|(s, _)| !s.is_empty()).map(|(s, _)| format!("[{s}]")).collect();
    match nearest(name, SECTIONS.iter().map(|(s, _)| *s).filter(|s| !s.is_empty())) {
        Some(near) => format!("unknown section; did you mean [{near}]?"),
        None => format!("unknown section; the sections are {}", sections.join(", ")),
    }
}

/// The candidate most like `word`, if any is alike enough to be a likely typo.
fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
