//! The Cloudflare API token: where it is loaded from, and keeping it out of every output.
//!
//! This module owns the token's only long-lived copy in memory. [`ApiToken`] never prints,
//! serializes or logs its value and is zeroed when dropped; [`ApiToken::expose`] exists only to
//! build the `Authorization` header. Errors name the file or variable the token should come from,
//! never the token.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};

use crate::config::CloudflareSettings;

const REDACTED: &str = "[redacted]";

/// The environment variable systemd sets to the directory holding `LoadCredential=` files.
const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Ways to write "the systemd credentials directory" at the start of `api_token_file`. The
/// config file is not a unit file, so systemd does not expand `%d` in it: we do.
const CREDENTIALS_PREFIXES: [&str; 3] = [
    "%d/",
    "$CREDENTIALS_DIRECTORY/",
    "${CREDENTIALS_DIRECTORY}/",
];

/// A Cloudflare API token. `Debug` and `Display` print `[redacted]`; there is deliberately no
/// `Serialize`; the value is zeroed on drop (by [`SecretString`]).
#[derive(Clone)]
pub struct ApiToken(SecretString);

impl ApiToken {
    /// Wraps a token, trimming surrounding whitespace (token files usually end with a newline).
    /// Rejects an empty token and one with whitespace, control or non-ASCII characters inside,
    /// which would be a file holding something other than one token. The input is zeroed
    /// either way.
    pub fn new(mut raw: String) -> Result<Self, TokenError> {
        let token = Self::from_trimmed(raw.trim());
        raw.zeroize();
        token
    }

    fn from_trimmed(token: &str) -> Result<Self, TokenError> {
        if token.is_empty() {
            Err(TokenError::Empty)
        } else if !token.chars().all(|c| c.is_ascii_graphic()) {
            // Also catches invisible non-ASCII (a BOM, a zero-width space) that would otherwise
            // fail later, and obscurely, as an HTTP header.
            Err(TokenError::Malformed)
        } else {
            // `From<&str>` allocates exactly the token's length, so no unzeroed spare capacity.
            Ok(Self(SecretString::from(token)))
        }
    }

    /// Loads the token named by the settings: from `api_token_file` when it is set (a path
    /// starting with `%d/` or `$CREDENTIALS_DIRECTORY/` is resolved in systemd's credentials
    /// directory), otherwise from the environment variable named by `api_token_env`.
    pub fn load(settings: &CloudflareSettings) -> Result<ApiToken, TokenError> {
        Self::load_with(settings, |name| std::env::var_os(name))
    }

    /// [`ApiToken::load`] with the environment passed in, so tests need not mutate the process's.
    fn load_with(
        settings: &CloudflareSettings,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<ApiToken, TokenError> {
        match &settings.api_token_file {
            Some(file) => read_token_file(&credentials_path(file, env(CREDENTIALS_DIRECTORY))?),
            None => token_from_env(&settings.api_token_env, env(&settings.api_token_env)),
        }
    }

    /// The token itself. Use it only to build the `Authorization` header.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Why no token could be loaded. Each message says what to do; none contains the token.
/// Messages are complete on their own: the I/O error is part of the message rather than a
/// `source()`, because callers also log this error with `to_string()`.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the API token is empty")]
    Empty,
    #[error(
        "the API token contains whitespace, control or non-ASCII characters; a Cloudflare API \
         token is a single word of letters, digits, '-' and '_'"
    )]
    Malformed,
    /// Missing or forbidden: the hint is about where the file is and who may read it.
    #[error(
        "cannot read the API token file {}: {error}; make sure it exists and is readable by \
         the user zt-janitor runs as (under systemd, prefer LoadCredential=cloudflare-token:<file> \
         with api_token_file = \"%d/cloudflare-token\")",
        path.display()
    )]
    FileUnreadable { path: PathBuf, error: io::Error },
    /// Any other I/O error (too many open files, a directory, an I/O error): the error says it.
    #[error("cannot read the API token file {}: {error}", path.display())]
    FileReadFailed { path: PathBuf, error: io::Error },
    #[error(
        "the API token file {} is larger than {max} bytes, so it cannot hold just a token (a \
         Cloudflare API token is about 40 characters); check that api_token_file names the \
         token file",
        path.display()
    )]
    FileTooLarge { path: PathBuf, max: u64 },
    #[error(
        "the API token file {} is not UTF-8 text: it must hold the Cloudflare API token as \
         text (one line, optionally ending with a newline)",
        path.display()
    )]
    FileNotText { path: PathBuf },
    #[error("the API token file {} is empty: write the Cloudflare API token into it", path.display())]
    FileEmpty { path: PathBuf },
    #[error(
        "the API token file {} does not hold a single token: it must contain only the Cloudflare \
         API token (one line, optionally ending with a newline)",
        path.display()
    )]
    FileMalformed { path: PathBuf },
    #[error(
        "api_token_file {} points into the systemd credentials directory, but \
         {CREDENTIALS_DIRECTORY} is not set: run zt-janitor as a systemd service with \
         LoadCredential=, or give the file's full path",
        path.display()
    )]
    NoCredentialsDirectory { path: PathBuf },
    #[error(
        "the environment variable {name} is not set: export the Cloudflare API token in it, \
         or set [cloudflare] api_token_file to a file that holds the token"
    )]
    EnvUnset { name: String },
    #[error(
        "the environment variable {name} is empty: put the Cloudflare API token in it, \
         or set [cloudflare] api_token_file to a file that holds the token"
    )]
    EnvEmpty { name: String },
    #[error(
        "the environment variable {name} does not hold a single token (it contains \
         whitespace, control or non-ASCII characters, or invalid UTF-8): it must contain only \
         the Cloudflare API token"
    )]
    EnvMalformed { name: String },
}

/// Resolves a `%d/…` or `$CREDENTIALS_DIRECTORY/…` path against systemd's credentials directory.
fn credentials_path(file: &Path, credentials_dir: Option<OsString>) -> Result<PathBuf, TokenError> {
    let Some(rest) = file.to_str().and_then(|s| {
        CREDENTIALS_PREFIXES
            .iter()
            .find_map(|prefix| s.strip_prefix(prefix))
    }) else {
        return Ok(file.to_owned());
    };
    match credentials_dir {
        Some(dir) if !dir.is_empty() => Ok(Path::new(&dir).join(rest)),
        _ => Err(TokenError::NoCredentialsDirectory {
            path: file.to_owned(),
        }),
    }
}

/// The most a token file may hold. A Cloudflare API token is about 40 characters; anything
/// near this is some other file, and reading on (`/dev/zero`, a log file) would exhaust memory
/// or send the file as a header.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// The byte order mark some editors put at the start of a UTF-8 file.
const BOM: char = '\u{feff}';

fn read_token_file(path: &Path) -> Result<ApiToken, TokenError> {
    let mut file = File::open(path).map_err(|e| file_error(path, e))?;
    // Checked on the opened file, so the mode is that of the file actually read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file
            .metadata()
            .map_err(|e| file_error(path, e))?
            .permissions()
            .mode();
        if let Some(warning) = permission_warning(mode, path) {
            tracing::warn!("{warning}");
        }
    }
    // One byte over the cap tells "too large" from "exactly at the cap" without reading more.
    // The capacity is never exceeded, so no reallocation leaves an unzeroed copy behind.
    let limit = MAX_TOKEN_FILE_BYTES + 1;
    let mut bytes = Vec::with_capacity(limit as usize);
    let read = file.by_ref().take(limit).read_to_end(&mut bytes);
    if let Err(e) = read {
        bytes.zeroize();
        return Err(file_error(path, e));
    }
    if bytes.len() as u64 > MAX_TOKEN_FILE_BYTES {
        bytes.zeroize();
        return Err(TokenError::FileTooLarge {
            path: path.to_owned(),
            max: MAX_TOKEN_FILE_BYTES,
        });
    }
    let mut text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            e.into_bytes().zeroize();
            return Err(TokenError::FileNotText {
                path: path.to_owned(),
            });
        }
    };
    let token = ApiToken::from_trimmed(text.strip_prefix(BOM).unwrap_or(&text).trim());
    text.zeroize();
    token.map_err(|e| match e {
        TokenError::Empty => TokenError::FileEmpty {
            path: path.to_owned(),
        },
        TokenError::Malformed => TokenError::FileMalformed {
            path: path.to_owned(),
        },
        other => other,
    })
}

/// An I/O error on the token file; the hint about existence and permissions only where it
/// applies.
fn file_error(path: &Path, error: io::Error) -> TokenError {
    let path = path.to_owned();
    match error.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
            TokenError::FileUnreadable { path, error }
        }
        _ => TokenError::FileReadFailed { path, error },
    }
}

fn token_from_env(name: &str, value: Option<OsString>) -> Result<ApiToken, TokenError> {
    let name = name.to_owned();
    let value = value.ok_or_else(|| TokenError::EnvUnset { name: name.clone() })?;
    let value = value
        .into_string()
        .map_err(|_| TokenError::EnvMalformed { name: name.clone() })?;
    ApiToken::new(value).map_err(|e| match e {
        TokenError::Empty => TokenError::EnvEmpty { name },
        TokenError::Malformed => TokenError::EnvMalformed { name },
        other => other,
    })
}

/// A warning when the token file's mode lets group or others read it. Not an error: Kubernetes
/// secret volumes are 0644 unless `defaultMode` is set, and refusing would break them.
#[cfg_attr(not(unix), allow(dead_code))]
fn permission_warning(mode: u32, path: &Path) -> Option<String> {
    (mode & 0o077 != 0).then(|| {
        format!(
            "the API token file {path} is accessible to other users (mode {mode:04o}): run \
             `chmod 600 {path}` (for a Kubernetes secret, set defaultMode: 0400)",
            path = path.display(),
            mode = mode & 0o7777,
        )
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const SECRET: &str = "cf-Z9xY8wV7uT6sR5qP4oN3mL2kJ1iH0gF_eDcB";

    fn settings(file: Option<&str>, env: &str) -> CloudflareSettings {
        let text = format!(
            "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\n{}\
             [[rule]]\nname = \"r\"\nresource = \"device_registration\"\naction = \"delete\"\n\
             idle_days = 90\n",
            file.map(|f| format!("api_token_file = {f:?}\n"))
                .unwrap_or_else(|| format!("api_token_env = {env:?}\n")),
        );
        crate::config::Config::from_toml_str(&text, Path::new("t.toml"))
            .unwrap()
            .cloudflare
    }

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn token_file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    #[test]
    fn token_never_appears_when_formatted() {
        #[derive(Debug)]
        #[allow(dead_code)] // only read through Debug
        struct Holder {
            token: ApiToken,
        }
        let token = ApiToken::new(SECRET.to_owned()).unwrap();
        let holder = Holder {
            token: token.clone(),
        };
        let error = anyhow::anyhow!("request with {token} failed").context(format!("{token:?}"));
        let outputs = [
            format!("{token}"),
            format!("{token:?}"),
            format!("{token:#?}"),
            format!("{holder:?}"),
            format!("{holder:#?}"),
            format!("{error:#}"),
            format!("{error:?}"),
        ];
        for out in outputs {
            assert!(!out.contains(SECRET), "token leaked in {out:?}");
            assert!(out.contains("[redacted]"), "no placeholder in {out:?}");
        }
        assert_eq!(token.expose(), SECRET);
    }

    #[test]
    fn token_errors_never_contain_the_value() {
        let bad = format!("{SECRET} second-line\n");
        let f = token_file(&bad);
        let path = f.path().to_str().unwrap().to_owned();
        let errors = [
            ApiToken::new(bad.clone()).unwrap_err(),
            ApiToken::load_with(&settings(Some(&path), ""), no_env).unwrap_err(),
            ApiToken::load_with(&settings(None, "TOKEN"), |_| Some(bad.clone().into()))
                .unwrap_err(),
        ];
        for e in errors {
            for out in [e.to_string(), format!("{e:?}")] {
                assert!(!out.contains(SECRET), "token leaked in {out:?}");
            }
        }
    }

    #[test]
    fn new_trims_the_trailing_newline_and_rejects_blank_or_multiword() {
        assert_eq!(
            ApiToken::new(format!("{SECRET}\n")).unwrap().expose(),
            SECRET
        );
        assert_eq!(
            ApiToken::new(format!("{SECRET}\r\n")).unwrap().expose(),
            SECRET
        );
        assert!(matches!(
            ApiToken::new(String::new()),
            Err(TokenError::Empty)
        ));
        assert!(matches!(
            ApiToken::new(" \n\t\n".into()),
            Err(TokenError::Empty)
        ));
        assert!(matches!(
            ApiToken::new("a b".into()),
            Err(TokenError::Malformed)
        ));
        assert!(matches!(
            ApiToken::new("a\nb\n".into()),
            Err(TokenError::Malformed)
        ));
    }

    #[test]
    fn loads_from_file_and_reports_unreadable_or_empty_files() {
        let f = token_file(&format!("{SECRET}\n"));
        let path = f.path().to_str().unwrap();
        let token = ApiToken::load_with(&settings(Some(path), ""), no_env).unwrap();
        assert_eq!(token.expose(), SECRET);

        let empty = token_file("\n");
        let e = ApiToken::load_with(&settings(empty.path().to_str(), ""), no_env).unwrap_err();
        assert!(matches!(e, TokenError::FileEmpty { .. }), "{e:?}");

        let e =
            ApiToken::load_with(&settings(Some("/nonexistent/zt-token"), ""), no_env).unwrap_err();
        let message = e.to_string();
        assert!(message.contains("/nonexistent/zt-token"), "{message}");
        assert!(message.contains("No such file"), "{message}");
        assert!(message.contains("LoadCredential"), "{message}");
    }

    #[test]
    fn file_takes_precedence_over_the_env_var() {
        let f = token_file(SECRET);
        let s = settings(f.path().to_str(), "");
        let token = ApiToken::load_with(&s, |_| Some("from-env".into())).unwrap();
        assert_eq!(token.expose(), SECRET);
    }

    #[test]
    fn loads_from_systemd_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cloudflare-token"), format!("{SECRET}\n")).unwrap();
        let env = |name: &str| (name == CREDENTIALS_DIRECTORY).then(|| dir.path().into());
        for file in [
            "%d/cloudflare-token",
            "$CREDENTIALS_DIRECTORY/cloudflare-token",
        ] {
            let token = ApiToken::load_with(&settings(Some(file), ""), env).unwrap();
            assert_eq!(token.expose(), SECRET, "{file}");
        }
        let e =
            ApiToken::load_with(&settings(Some("%d/cloudflare-token"), ""), no_env).unwrap_err();
        assert!(
            matches!(e, TokenError::NoCredentialsDirectory { .. }),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("CREDENTIALS_DIRECTORY is not set"),
            "{e}"
        );
    }

    #[test]
    fn credentials_prefix_only_applies_at_the_start() {
        let dir = Some(OsString::from("/run/credentials/zt-janitor.service"));
        let p = |s: &str| credentials_path(Path::new(s), dir.clone()).unwrap();
        assert_eq!(
            p("%d/tok"),
            Path::new("/run/credentials/zt-janitor.service/tok")
        );
        assert_eq!(
            p("${CREDENTIALS_DIRECTORY}/tok"),
            Path::new("/run/credentials/zt-janitor.service/tok")
        );
        assert_eq!(p("/etc/zt/%d/tok"), Path::new("/etc/zt/%d/tok"));
        assert_eq!(p("tok"), Path::new("tok"));
    }

    #[test]
    fn env_var_errors_name_the_variable_and_suggest_a_file() {
        let s = settings(None, "ZT_TEST_TOKEN");
        let unset = ApiToken::load_with(&s, no_env).unwrap_err();
        let empty = ApiToken::load_with(&s, |_| Some("\n".into())).unwrap_err();
        assert!(matches!(unset, TokenError::EnvUnset { .. }), "{unset:?}");
        assert!(matches!(empty, TokenError::EnvEmpty { .. }), "{empty:?}");
        for e in [unset, empty] {
            let message = e.to_string();
            assert!(message.contains("ZT_TEST_TOKEN"), "{message}");
            assert!(message.contains("api_token_file"), "{message}");
        }
        let token = ApiToken::load_with(&s, |name| {
            (name == "ZT_TEST_TOKEN").then(|| format!("{SECRET}\n").into())
        })
        .unwrap();
        assert_eq!(token.expose(), SECRET);
    }

    #[test]
    fn permission_warning_only_for_group_or_other_access() {
        let path = Path::new("/etc/zt-janitor/token");
        assert_eq!(permission_warning(0o100600, path), None);
        assert_eq!(permission_warning(0o100400, path), None);
        for mode in [0o100644, 0o100640, 0o100604, 0o100660] {
            let warning = permission_warning(mode, path).expect("warning");
            assert!(warning.contains("/etc/zt-janitor/token"), "{warning}");
            assert!(warning.contains("chmod 600"), "{warning}");
        }
        assert!(permission_warning(0o100644, path)
            .unwrap()
            .contains("mode 0644"));
    }

    const HINT: &str = "make sure it exists";

    fn load_file(path: &Path) -> Result<ApiToken, TokenError> {
        ApiToken::load_with(&settings(path.to_str(), ""), no_env)
    }

    #[test]
    fn token_files_larger_than_4_kib_are_refused_without_reading_them_whole() {
        let at_cap = token_file(&"a".repeat(4096));
        assert_eq!(load_file(at_cap.path()).unwrap().expose().len(), 4096);

        let over = token_file(&"a".repeat(4097));
        // 50 MB, sparse: cheap to make, and read whole it would go out as a header.
        let huge = tempfile::NamedTempFile::new().unwrap();
        huge.as_file().set_len(50 << 20).unwrap();
        let mut paths = vec![over.path().to_owned(), huge.path().to_owned()];
        // Endless: reading it whole would never finish.
        if cfg!(unix) {
            paths.push(PathBuf::from("/dev/zero"));
        }
        for path in paths {
            let e = load_file(&path).unwrap_err();
            assert!(
                matches!(e, TokenError::FileTooLarge { .. }),
                "{}: {e:?}",
                path.display()
            );
            let message = e.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("larger than 4096 bytes"), "{message}");
            assert!(!message.contains(HINT), "{message}");
        }
    }

    #[test]
    fn a_utf8_byte_order_mark_at_the_start_is_stripped() {
        let f = token_file(&format!("\u{feff}{SECRET}\r\n"));
        assert_eq!(load_file(f.path()).unwrap().expose(), SECRET);

        let only_bom = token_file("\u{feff}\n");
        let e = load_file(only_bom.path()).unwrap_err();
        assert!(matches!(e, TokenError::FileEmpty { .. }), "{e:?}");

        // Only at the start: elsewhere it is not part of any token.
        let inside = token_file(&format!("{SECRET}\u{feff}\n"));
        let e = load_file(inside.path()).unwrap_err();
        assert!(matches!(e, TokenError::FileMalformed { .. }), "{e:?}");
        let env = ApiToken::load_with(&settings(None, "T"), |_| {
            Some(format!("\u{200b}{SECRET}").into())
        });
        assert!(
            matches!(env, Err(TokenError::EnvMalformed { .. })),
            "{env:?}"
        );
    }

    #[test]
    fn invalid_utf8_says_the_file_must_hold_text_without_the_exists_hint() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"\xff\xfecf-token\n").unwrap();
        let message = load_file(f.path()).unwrap_err().to_string();
        assert!(
            message.contains("must hold the Cloudflare API token as text"),
            "{message}"
        );
        assert!(
            message.contains(&f.path().display().to_string()),
            "{message}"
        );
        assert!(!message.contains(HINT), "{message}");
    }

    #[test]
    fn the_exists_hint_is_given_only_when_the_file_is_missing_or_forbidden() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_file(dir.path()).unwrap_err().to_string();
        assert!(e.contains("Is a directory") && !e.contains(HINT), "{e}");

        let path = Path::new("/etc/zt-janitor/token");
        // (case, error, hint expected)
        let cases = [
            ("missing", io::Error::from(io::ErrorKind::NotFound), true),
            (
                "forbidden",
                io::Error::from(io::ErrorKind::PermissionDenied),
                true,
            ),
            ("EMFILE", io::Error::from_raw_os_error(24), false),
            ("EIO", io::Error::from_raw_os_error(5), false),
            ("other", io::Error::other("disk on fire"), false),
        ];
        for (case, error, hint) in cases {
            let shown = error.to_string();
            let message = file_error(path, error).to_string();
            assert_eq!(message.contains(HINT), hint, "{case}: {message}");
            assert!(message.contains(&shown), "{case}: {message}");
            assert!(
                message.contains("/etc/zt-janitor/token"),
                "{case}: {message}"
            );
        }
    }
}
