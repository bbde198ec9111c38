//! Layered configuration: defaults in code, then a TOML file, then
//! `HERALD__SECTION__KEY` environment variables. Unknown keys are rejected
//! (`deny_unknown_fields` on every struct) and every bad value is reported
//! with its path, not only the first. One exception, so that one
//! environment file can serve every stage: an environment key for another
//! stage's section ([`SECTIONS`], say `HERALD__DELIVER__*` read by the
//! router) is ignored, and the stage says so on stderr.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

/// Where configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// A TOML file, if any.
    pub file: Option<PathBuf>,
    /// Environment variables (normally `std::env::vars()`); only the ones
    /// starting with `HERALD__` are read.
    pub env: BTreeMap<String, String>,
    /// Defaults as TOML text, applied below the file.
    pub defaults: Option<String>,
}

impl ConfigSource {
    /// The process environment and an optional file.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        Self {
            file,
            env: std::env::vars().collect(),
            defaults: None,
        }
    }
}

/// Why configuration could not be loaded. `Invalid` lists every problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// File path.
        path: String,
        /// Parser message.
        message: String,
    },
    /// One or more values are wrong.
    #[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// `path: problem` per bad value.
        problems: Vec<String>,
    },
}

const ENV_PREFIX: &str = "HERALD__";

/// Every top-level section some Herald stage reads.
pub const SECTIONS: &[&str] = &[
    "admin", "codec", "deliver", "dev", "gateway", "kafka", "log", "router", "sandbox", "scaler",
    "topics", "tracker",
];

/// Exit code of a process refused for its configuration (`EX_CONFIG`).
pub const EXIT_CONFIG: u8 = 78;

/// A stage binary's configuration from the process environment and an
/// optional file, checked by `validate`. On any error the reason is said on
/// stderr (every bad value with its path) and the exit code is
/// [`EXIT_CONFIG`].
pub fn load_stage_config<T: DeserializeOwned>(
    stage: &str,
    file: Option<PathBuf>,
    validate: impl FnOnce(&mut T) -> Result<(), String>,
) -> Result<T, std::process::ExitCode> {
    let refuse = |why: &dyn std::fmt::Display| {
        eprintln!("herald-{stage}: {why}");
        std::process::ExitCode::from(EXIT_CONFIG)
    };
    let (mut config, ignored): (T, _) =
        load_config_noting(&ConfigSource::from_process(file)).map_err(|e| refuse(&e))?;
    for section in ignored {
        eprintln!(
            "herald-{stage}: ignoring HERALD__{}__* (the [{section}] section is another stage's)",
            section.to_ascii_uppercase()
        );
    }
    validate(&mut config).map_err(|e| refuse(&e))?;
    Ok(config)
}

/// Loads `T` from the layers in `source`.
pub fn load_config<T: DeserializeOwned>(source: &ConfigSource) -> Result<T, ConfigError> {
    load_config_noting(source).map(|(config, _)| config)
}

/// Loads `T` from the layers in `source`, with the other stages' sections
/// set only in the environment that were ignored.
pub fn load_config_noting<T: DeserializeOwned>(
    source: &ConfigSource,
) -> Result<(T, Vec<String>), ConfigError> {
    let mut merged = Table::new();
    if let Some(defaults) = &source.defaults {
        let t: Table = defaults
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: "<defaults>".into(),
                message: e.to_string(),
            })?;
        merge(&mut merged, t);
    }
    if let Some(path) = &source.file {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.clone(),
            source: e,
        })?;
        let t: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: path.display().to_string(),
                message: e.message().to_string(),
            })?;
        merge(&mut merged, t);
    }
    let mut problems = Vec::new();
    let mut env_only = std::collections::BTreeSet::new();
    for (key, raw) in &source.env {
        let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            problems.push(format!("{key}: empty path segment"));
            continue;
        }
        if !merged.contains_key(&path[0]) || env_only.contains(&path[0]) {
            env_only.insert(path[0].clone());
        }
        set_path(&mut merged, &path, env_value(raw));
    }
    deserialize_reporting_all(merged, problems, &env_only)
}

/// Environment values are TOML scalars or arrays when they parse as such
/// (`250`, `true`, `["a","b"]`), strings otherwise; durations like `"250ms"`
/// are strings either way.
fn env_value(raw: &str) -> Value {
    let doc = format!("v = {raw}");
    match doc.parse::<Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    }
}

fn merge(into: &mut Table, from: Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn set_path(table: &mut Table, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        let Value::Table(t) = entry else { return };
        cur = t;
    }
    cur.insert(last.clone(), value);
}

/// Deserialises; on an error at some path, records it, removes that value
/// (so the default applies) and tries again, to report every bad value at once.
fn deserialize_reporting_all<T: DeserializeOwned>(
    mut merged: Table,
    mut problems: Vec<String>,
    env_only: &std::collections::BTreeSet<String>,
) -> Result<(T, Vec<String>), ConfigError> {
    let mut ignored = Vec::new();
    for _ in 0..64 {
        let value = Value::Table(merged.clone());
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) if problems.is_empty() => return Ok((v, ignored)),
            Ok(_) => return Err(ConfigError::Invalid { problems }),
            Err(err) => {
                // Segments, not the dotted string: keys may contain dots
                // (`kafka.overrides."session.timeout.ms"`).
                let segments: Vec<String> = err
                    .path()
                    .iter()
                    .map(|seg| match seg {
                        serde_path_to_error::Segment::Seq { index } => index.to_string(),
                        serde_path_to_error::Segment::Map { key } => key.clone(),
                        serde_path_to_error::Segment::Enum { variant } => variant.clone(),
                        serde_path_to_error::Segment::Unknown => "?".to_string(),
                    })
                    .collect();
                let message = err.into_inner().message().to_string();
                if let [section] = segments.as_slice() {
                    if message.starts_with("unknown field")
                        && env_only.contains(section)
                        && SECTIONS.contains(&section.as_str())
                    {
                        merged.remove(section);
                        ignored.push(section.clone());
                        continue;
                    }
                }
                let shown = segments
                    .iter()
                    .map(|s| {
                        if s.contains('.') {
                            format!("\"{s}\"")
                        } else {
                            s.clone()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(".");
                let removal = segments;
                let shown = if shown.is_empty() {
                    "<root>".to_string()
                } else {
                    shown
                };
                problems.push(format!("{shown}: {message}"));
                if removal.is_empty() || !remove_path(&mut merged, &removal) {
                    return Err(ConfigError::Invalid { problems });
                }
            }
        }
    }
    Err(ConfigError::Invalid { problems })
}

fn remove_path(table: &mut Table, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last).is_some(),
        [first, rest @ ..] => match table.get_mut(first) {
            Some(Value::Table(t)) => remove_path(t, rest),
            _ => table.remove(first).is_some(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::time::Duration;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[serde(default)]
        kafka: Kafka,
        #[serde(default = "default_name")]
        name: String,
    }

    fn default_name() -> String {
        "herald".into()
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Kafka {
        bootstrap: String,
        partitions: u32,
        #[serde(with = "humantime_serde")]
        linger: Duration,
    }

    impl Default for Kafka {
        fn default() -> Self {
            Self {
                bootstrap: "127.0.0.1:9092".into(),
                partitions: 12,
                linger: Duration::from_millis(5),
            }
        }
    }

    fn source(
        file: Option<&str>,
        env: &[(&str, &str)],
    ) -> (ConfigSource, Option<tempfile::NamedTempFile>) {
        let tmp = file.map(|text| {
            let f = tempfile::NamedTempFile::new().expect("tmp");
            std::fs::write(f.path(), text).expect("write");
            f
        });
        let src = ConfigSource {
            file: tmp.as_ref().map(|f| f.path().to_path_buf()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            defaults: None,
        };
        (src, tmp)
    }

    #[test]
    fn layers_apply_in_order_defaults_file_env() {
        let (src, _f) = source(
            Some("name = \"from-file\"\n[kafka]\npartitions = 6\nlinger = \"20ms\"\n"),
            &[("HERALD__KAFKA__PARTITIONS", "24"), ("OTHER", "x")],
        );
        let cfg: Cfg = load_config(&src).expect("load");
        assert_eq!(cfg.name, "from-file");
        assert_eq!(cfg.kafka.partitions, 24);
        assert_eq!(cfg.kafka.linger, Duration::from_millis(20));
        assert_eq!(cfg.kafka.bootstrap, "127.0.0.1:9092");
    }

    #[test]
    fn every_bad_value_is_reported_with_its_path() {
        let (src, _f) = source(
            Some(
                "nmae = \"typo\"\n[kafka]\npartitions = \"many\"\nlinger = \"soon\"\nbrokers = 3\n",
            ),
            &[],
        );
        let err = load_config::<Cfg>(&src).unwrap_err();
        let ConfigError::Invalid { problems } = &err else {
            panic!("{err}")
        };
        let text = err.to_string();
        assert_eq!(problems.len(), 4, "{text}");
        for path in [
            "nmae:",
            "kafka.partitions:",
            "kafka.linger:",
            "kafka.brokers:",
        ] {
            assert!(text.contains(path), "missing {path} in {text}");
        }
    }

    #[test]
    fn env_values_are_typed_and_bad_ones_named() {
        let (src, _f) = source(None, &[("HERALD__KAFKA__PARTITIONS", "lots")]);
        let err = load_config::<Cfg>(&src).unwrap_err().to_string();
        assert!(err.contains("kafka.partitions"), "{err}");
        let (src, _f) = source(None, &[("HERALD__KAFKA__LINGER", "1s")]);
        assert_eq!(
            load_config::<Cfg>(&src).expect("load").kafka.linger,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn keys_with_dots_are_reported_and_skipped_one_by_one() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Over {
            overrides: std::collections::BTreeMap<String, u32>,
        }
        let (src, _f) = source(
            None,
            &[
                ("HERALD__OVERRIDES__session.timeout.ms", "soon"),
                ("HERALD__OVERRIDES__fetch.max.bytes", "big"),
            ],
        );
        let err = load_config::<Over>(&src).unwrap_err().to_string();
        assert!(err.contains("overrides.\"session.timeout.ms\""), "{err}");
        assert!(err.contains("overrides.\"fetch.max.bytes\""), "{err}");
    }

    #[test]
    fn another_stages_section_in_the_environment_is_ignored_and_named() {
        // One environment file for every stage: the router reads it too.
        let (src, _f) = source(
            None,
            &[
                ("HERALD__DELIVER__MAX_IN_FLIGHT", "4"),
                ("HERALD__SCALER__POLL_INTERVAL", "2s"),
                ("HERALD__KAFKA__PARTITIONS", "6"),
            ],
        );
        let (cfg, ignored): (Cfg, _) = load_config_noting(&src).unwrap();
        assert_eq!(cfg.kafka.partitions, 6);
        assert_eq!(ignored, vec!["deliver".to_string(), "scaler".to_string()]);

        // A typo is no section of any stage: still refused, by name.
        let (src, _f) = source(None, &[("HERALD__KAFAK__BOOTSTRAP", "x:9092")]);
        let err = load_config::<Cfg>(&src).unwrap_err().to_string();
        assert!(err.contains("kafak"), "{err}");

        // A file is one stage's own: another stage's section there is refused.
        let (src, _f) = source(Some("[deliver]\nmax_in_flight = 4\n"), &[]);
        let err = load_config::<Cfg>(&src).unwrap_err().to_string();
        assert!(err.contains("deliver"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let (src, _f) = source(Some("[kafka\n"), &[]);
        assert!(matches!(
            load_config::<Cfg>(&src),
            Err(ConfigError::Syntax { .. })
        ));
    }
}
