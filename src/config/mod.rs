//! Configuration: the YAML file, validated into [`Config`].
//!
//! `load` reads the file, checks every key, type and cross-reference, and
//! returns either a typed [`Config`] or *every* error found, each with the
//! file, line and column it refers to.
//!
//! The layers: [`yaml`] turns text into a tree of positioned nodes and offers
//! the reader helpers; `validate` walks that tree section by section
//! (`targets` for the `targets:` lists, `monitoring` for `metrics:` and
//! `notify:`), with the value checks (domain names, secrets, addresses) in
//! `values`.

mod duration;
mod monitoring;
mod targets;
mod types;
mod validate;
mod values;
mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

pub use duration::parse_duration;
pub use monitoring::{DEFAULT_EXPIRING_DAYS, DEFAULT_NOTIFY_EXEC_TIMEOUT, DEFAULT_WEBHOOK_TIMEOUT};
pub use types::*;

/// Read and validate the configuration file at `path`; secrets named
/// `{ env: NAME }` are read from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigErrors::single(path, format!("cannot read the configuration file: {e}"))
    })?;
    // The configuration names commands certherd runs (reload, exec, hooks)
    // and where keys go: a file every user may change is a way in.
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::MetadataExt;
        if meta.mode() & 0o002 != 0 {
            return Err(ConfigErrors::single(
                path,
                format!(
                    "the configuration file is writable by every user (mode {:04o}); it names \
                     commands certherd runs and where keys go, so certherd refuses it \
                     (chmod o-w {})",
                    meta.mode() & 0o7777,
                    path.display()
                ),
            ));
        }
    }
    let src = String::from_utf8(bytes).map_err(|e| {
        ConfigErrors::single(
            path,
            format!(
                "the configuration file is not valid UTF-8 (at byte {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    load_str(&src, path, &|name| std::env::var(name).ok())
}

/// Validate configuration text. `path` names the file in messages, and
/// relative paths in the configuration are resolved against its folder;
/// `env` looks up environment variables for `{ env: NAME }` secrets.
pub fn load_str(
    src: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut d = Diag::new(path.to_path_buf());
    let config = yaml::parse(src, &mut d).and_then(|root| {
        let base = base_dir(path);
        validate::config(&root, path, &base, env, &mut d)
    });
    if d.errors.is_empty() {
        if let Some(config) = config {
            return Ok(config);
        }
        d.at(
            yaml::Pos { line: 1, column: 1 },
            "the configuration file is empty",
        );
    }
    // Document order; errors at the same place keep the order they were found in.
    d.errors.sort_by_key(|e| (e.line, e.column));
    Err(ConfigErrors { errors: d.errors })
}

/// The folder that relative paths are resolved against, made absolute.
fn base_dir(path: &Path) -> PathBuf {
    let parent = path.parent().unwrap_or(Path::new(""));
    if parent.is_absolute() {
        parent.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(parent))
            .unwrap_or_else(|_| parent.to_path_buf())
    }
}

/// One problem in the configuration, at a place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is with the file as a whole (it could
    /// not be read), in which case no position is printed.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a configuration, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    fn single(path: &Path, message: String) -> ConfigErrors {
        ConfigErrors {
            errors: vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                message,
            }],
        }
    }
}

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The errors collected while validating one file.
pub(crate) struct Diag {
    file: PathBuf,
    errors: Vec<ConfigError>,
}

impl Diag {
    fn new(file: PathBuf) -> Diag {
        Diag {
            file,
            errors: Vec::new(),
        }
    }

    fn at(&mut self, pos: yaml::Pos, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        });
    }
}
