//! Secret files: the one reader for every secret the configuration names by path
//! (`password_file`, `token_file`, `access.keys_file`, the store's `key_file` and
//! `url_file`).
//!
//! The trimming rule, everywhere: trailing line breaks (`\n` or `\r\n`, any number)
//! are not part of a secret — a file written with `echo` or by a Kubernetes Secret
//! ends with one — while every other character is, spaces and tabs included, inside or
//! at either end. A file must be UTF-8 and at most [`MAX_SECRET_FILE`] bytes (or a
//! caller's own limit).
//!
//! Files are read again when they are used or change, never only at start-up: a file
//! that has become unreadable keeps its last good value ([`SecretFile`]), with the
//! error logged once, naming the file (never its content).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use secrecy::{ExposeSecret, SecretString};

/// Largest single-secret file read: a password, a token or a URL is far smaller; a
/// larger file is the wrong file.
pub(crate) const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Why a secret file could not be used. Carries the path, never the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretFileError {
    #[error("{path}: cannot read it: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: larger than {max} bytes; is it the right file?")]
    TooLarge { path: String, max: u64 },
    #[error("{path}: not UTF-8 text")]
    NotText { path: String },
    #[error("{path}: the file is empty")]
    Empty { path: String },
}

/// Reads a file of at most `max` bytes as text, with trailing line breaks removed.
/// May be empty; for one secret use [`read_secret`].
pub(crate) fn read_text(path: &Path, max: u64) -> Result<String, SecretFileError> {
    let shown = || path.display().to_string();
    let read_error = |error: std::io::Error| SecretFileError::Read {
        path: shown(),
        reason: error.to_string(),
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut content = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut content)
        .map_err(read_error)?;
    if content.len() as u64 > max {
        return Err(SecretFileError::TooLarge { path: shown(), max });
    }
    let mut text =
        String::from_utf8(content).map_err(|_| SecretFileError::NotText { path: shown() })?;
    let kept = text.trim_end_matches(['\r', '\n']).len();
    text.truncate(kept);
    Ok(text)
}

/// Reads one secret (a password, a token, a URL): [`read_text`], and not empty.
pub(crate) fn read_secret(path: &Path) -> Result<SecretString, SecretFileError> {
    let text = read_text(path, MAX_SECRET_FILE)?;
    if text.is_empty() {
        return Err(SecretFileError::Empty {
            path: path.display().to_string(),
        });
    }
    Ok(SecretString::from(text))
}

/// A store key file that cannot be used. Names the line, never its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("line {line}: not a key of 64 hex digits (make one with `openssl rand -hex 32`)")]
    Malformed { line: usize },
    #[error("holds no key")]
    Empty,
}

/// The keys of a store key file: one 256-bit key of 64 hex digits a line, the first
/// first; blank lines and lines starting with `#` are skipped, surrounding spaces
/// ignored.
pub(crate) fn parse_keys(text: &str) -> Result<Vec<secrecy::SecretBox<[u8; 32]>>, KeyFileError> {
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut key = Box::new([0u8; 32]);
        hex::decode_to_slice(line, key.as_mut())
            .map_err(|_| KeyFileError::Malformed { line: index + 1 })?;
        keys.push(secrecy::SecretBox::new(key));
    }
    if keys.is_empty() {
        return Err(KeyFileError::Empty);
    }
    Ok(keys)
}

/// A secret file read at every use, keeping the last good value when it becomes
/// unreadable.
#[derive(Debug)]
pub struct SecretFile {
    path: PathBuf,
    last_good: Mutex<Option<SecretString>>,
}

/// The value of a [`SecretFile`], and whether it changed since the last read.
#[derive(Debug)]
pub struct Current {
    pub secret: SecretString,
    pub changed: bool,
}

impl SecretFile {
    /// A file that has not been read yet.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            last_good: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file now. When it cannot be read, the last good value is used (and
    /// the error logged); with none, the error is returned.
    pub fn current(&self) -> Result<Current, SecretFileError> {
        let read = read_secret(&self.path);
        let mut last_good = self
            .last_good
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match (read, last_good.as_ref()) {
            (Ok(secret), previous) => {
                let changed = previous
                    .is_none_or(|previous| previous.expose_secret() != secret.expose_secret());
                *last_good = Some(secret.clone());
                Ok(Current { secret, changed })
            }
            (Err(error), Some(previous)) => {
                tracing::error!(
                    file = %self.path.display(),
                    cause = %error,
                    "secret file unreadable: keeping its last good value"
                );
                Ok(Current {
                    secret: previous.clone(),
                    changed: false,
                })
            }
            (Err(error), None) => Err(error),
        }
    }
}

/// A secret given inline in the configuration or by a file read at each use.
#[derive(Debug)]
pub enum Secret {
    Inline(SecretString),
    File(SecretFile),
}

impl Secret {
    /// The value now (see [`SecretFile::current`]); an inline value never changes.
    pub fn current(&self) -> Result<Current, SecretFileError> {
        match self {
            Self::Inline(secret) => Ok(Current {
                secret: secret.clone(),
                changed: false,
            }),
            Self::File(file) => file.current(),
        }
    }

    /// Reads a file now: whether its value changed since the last read (an inline
    /// value never changes).
    pub fn reread(&self) -> Result<bool, SecretFileError> {
        match self {
            Self::Inline(_) => Ok(false),
            Self::File(file) => file.current().map(|current| current.changed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(content: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, content).expect("write");
        (dir, path)
    }

    #[test]
    fn trailing_line_breaks_are_not_part_of_a_secret_but_spaces_are() {
        for (content, secret) in [
            (&b"pw\n"[..], "pw"),
            (b"pw\r\n", "pw"),
            (b"pw\n\n\r\n", "pw"),
            (b" pw \n", " pw "),
            (b"p w\t", "p w\t"),
            (b"pw", "pw"),
        ] {
            let (_dir, path) = file_with(content);
            let read = read_secret(&path).expect("readable");
            assert_eq!(read.expose_secret(), secret, "{content:?}");
        }
    }

    #[test]
    fn empty_large_binary_and_missing_files_are_errors_naming_the_path() {
        let (_dir, path) = file_with(b"\n\r\n");
        assert!(matches!(
            read_secret(&path),
            Err(SecretFileError::Empty { .. })
        ));
        let (_dir, path) = file_with(&vec![b'x'; MAX_SECRET_FILE as usize + 1]);
        assert!(matches!(
            read_secret(&path),
            Err(SecretFileError::TooLarge { .. })
        ));
        let (_dir, path) = file_with(&[0xff, 0xfe]);
        assert!(matches!(
            read_secret(&path),
            Err(SecretFileError::NotText { .. })
        ));
        let missing = Path::new("/nonexistent/ipproxy-secret");
        let message = read_secret(missing).expect_err("missing").to_string();
        assert!(
            message.starts_with("/nonexistent/ipproxy-secret: cannot read it"),
            "{message}"
        );
    }

    #[test]
    fn an_unreadable_file_keeps_its_last_good_value_and_changes_are_reported() {
        let (_dir, path) = file_with(b"first\n");
        let file = SecretFile::new(path.clone());
        let current = file.current().expect("readable");
        assert_eq!(current.secret.expose_secret(), "first");
        assert!(current.changed, "the first read is a change");
        assert!(!file.current().expect("readable").changed);
        std::fs::write(&path, "second\n").expect("rotate");
        let current = file.current().expect("readable");
        assert_eq!(current.secret.expose_secret(), "second");
        assert!(current.changed);
        std::fs::remove_file(&path).expect("remove");
        let current = file.current().expect("last good value");
        assert_eq!(current.secret.expose_secret(), "second");
        assert!(!current.changed);
        let never_read = SecretFile::new(path);
        assert!(never_read.current().is_err());
    }
}
