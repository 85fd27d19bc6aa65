//! The Cloudflare credentials: where they are loaded from, and keeping the secret ones out of
//! every output.
//!
//! This module owns the only long-lived copy in memory of the API token, or of the global API
//! key and its email. [`ApiToken`] and [`ApiKey`] never print, serialize or log their value and
//! are zeroed when dropped; their `expose` exists only to build the authentication headers.
//! Errors name the file or variable a credential should come from, never its value. Every
//! credential is read the same way: from its file when one is set (`%d/` meaning systemd's
//! credentials directory), else from its environment variable.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Auth, CloudflareSettings, UrlSource};

const REDACTED: &str = "[redacted]";

/// The environment variable systemd sets to the directory holding `LoadCredential=` files.
pub(crate) const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Ways to write "the systemd credentials directory" at the start of a credential file's path.
/// The config file is not a unit file, so systemd does not expand `%d` in it: we do.
pub(crate) const CREDENTIALS_PREFIXES: [&str; 3] = [
    "%d/",
    "$CREDENTIALS_DIRECTORY/",
    "${CREDENTIALS_DIRECTORY}/",
];

/// How the janitor authenticates: what [`Credentials::load`] read, as the settings' `auth`
/// asked.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// `Authorization: Bearer <token>`.
    ApiToken(ApiToken),
    /// The legacy `X-Auth-Email` + `X-Auth-Key`.
    GlobalKey { email: ApiEmail, key: ApiKey },
}

impl Credentials {
    /// Loads what `auth` needs: the API token, or the email and the global API key. Each is
    /// read from its file when one is set (`api_token_file`, `api_email_file`, `api_key_file`;
    /// a path starting with `%d/` or `$CREDENTIALS_DIRECTORY/` is resolved in systemd's
    /// credentials directory), otherwise from the environment variable its `*_env` names.
    pub fn load(settings: &CloudflareSettings) -> Result<Credentials, TokenError> {
        Self::load_with(settings, |name| std::env::var_os(name))
    }

    /// [`Credentials::load`] with the environment passed in, so tests need not mutate the
    /// process's.
    pub fn load_with(
        settings: &CloudflareSettings,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Credentials, TokenError> {
        match settings.auth {
            Auth::ApiToken => load_one(
                CredentialKind::ApiToken,
                settings.api_token_file.as_deref(),
                &settings.api_token_env,
                &env,
                |text| secret_word(text).map(ApiToken),
            )
            .map(Credentials::ApiToken),
            Auth::GlobalApiKey => {
                let email = load_one(
                    CredentialKind::ApiEmail,
                    settings.api_email_file.as_deref(),
                    &settings.api_email_env,
                    &env,
                    ApiEmail::from_trimmed,
                )?;
                let key = load_one(
                    CredentialKind::ApiKey,
                    settings.api_key_file.as_deref(),
                    &settings.api_key_env,
                    &env,
                    |text| secret_word(text).map(ApiKey),
                )?;
                Ok(Credentials::GlobalKey { email, key })
            }
        }
    }

    /// Whether these are an API token, which `tokens/verify` can name (a global key is not).
    pub fn is_api_token(&self) -> bool {
        matches!(self, Credentials::ApiToken(_))
    }
}

/// A Cloudflare API token. `Debug` and `Display` print `[redacted]`; there is deliberately no
/// `Serialize`; the value is zeroed on drop (by [`SecretString`]).
#[derive(Clone)]
pub struct ApiToken(SecretString);

impl ApiToken {
    /// Wraps a token, trimming surrounding whitespace (token files usually end with a newline).
    /// Rejects an empty token and one with whitespace, control or non-ASCII characters inside,
    /// which would be a file holding something other than one token. The input is zeroed
    /// either way.
    pub fn new(raw: String) -> Result<Self, TokenError> {
        from_raw(CredentialKind::ApiToken, raw, |text| {
            secret_word(text).map(ApiToken)
        })
    }

    /// The token itself. Use it only to build the `Authorization` header.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// A Cloudflare global API key, kept as carefully as [`ApiToken`]: `Debug` and `Display`
/// print `[redacted]`, no `Serialize`, zeroed on drop.
#[derive(Clone)]
pub struct ApiKey(SecretString);

impl ApiKey {
    /// Wraps a key as [`ApiToken::new`] wraps a token.
    pub fn new(raw: String) -> Result<Self, TokenError> {
        from_raw(CredentialKind::ApiKey, raw, |text| {
            secret_word(text).map(ApiKey)
        })
    }

    /// The key itself. Use it only to build the `X-Auth-Key` header.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Both print `[redacted]` however they are formatted.
macro_rules! redacted_formatting {
    ($($secret:ty),*) => {$(
        impl fmt::Debug for $secret {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(REDACTED)
            }
        }

        impl fmt::Display for $secret {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(REDACTED)
            }
        }
    )*};
}

/// A `[[notify]]` webhook URL, kept as carefully as [`ApiToken`] (a Slack webhook URL carries
/// its token): `Debug` and `Display` print `[redacted]`, no `Serialize`, zeroed on drop. Only
/// its host may be logged.
#[derive(Clone)]
pub struct WebhookUrl(SecretString);

impl WebhookUrl {
    /// Reads the URL from where `source` says: a file (`%d/` is systemd's credentials
    /// directory) or an environment variable. It must be one `https://` URL, or `http://` to
    /// a loopback host, without a user name or password.
    pub fn load(
        source: &UrlSource,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<WebhookUrl, TokenError> {
        let (file, name) = match source {
            UrlSource::File(path) => (Some(path.as_path()), ""),
            UrlSource::Env(name) => (None, name.as_str()),
        };
        load_one(CredentialKind::WebhookUrl, file, name, &env, webhook_url)
    }

    /// The URL itself. Use it only to send the request.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The host, which may be logged.
    pub fn host(&self) -> String {
        reqwest::Url::parse(self.expose())
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// A webhook URL: one word, `https://`, or `http://` to a loopback host, without
/// credentials.
fn webhook_url(text: &str) -> Result<WebhookUrl, Invalid> {
    let word = secret_word(text)?;
    let url = reqwest::Url::parse(word.expose_secret()).map_err(|_| Invalid::Malformed)?;
    let loopback = url.host_str().is_some_and(crate::config::is_loopback_host);
    let fits = match url.scheme() {
        "https" => true,
        "http" => loopback,
        _ => false,
    };
    if !fits || !url.username().is_empty() || url.password().is_some() {
        return Err(Invalid::Malformed);
    }
    Ok(WebhookUrl(word))
}

redacted_formatting!(ApiToken, ApiKey, WebhookUrl);

/// The email of the Cloudflare user whose global API key is used: not a secret, but checked to
/// be one word of printable ASCII with an `@`, since it goes out as a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiEmail(String);

impl ApiEmail {
    /// Wraps an email, trimming surrounding whitespace.
    pub fn new(raw: String) -> Result<Self, TokenError> {
        from_raw(CredentialKind::ApiEmail, raw, ApiEmail::from_trimmed)
    }

    fn from_trimmed(text: &str) -> Result<Self, Invalid> {
        if text.is_empty() {
            Err(Invalid::Empty)
        } else if !text.chars().all(|c| c.is_ascii_graphic()) || !text.contains('@') {
            Err(Invalid::Malformed)
        } else {
            Ok(ApiEmail(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApiEmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which credential a file or a variable was to hold, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    ApiToken,
    ApiKey,
    ApiEmail,
    WebhookUrl,
}

impl CredentialKind {
    /// As messages name it: "the {self} file".
    fn noun(self) -> &'static str {
        match self {
            CredentialKind::ApiToken => "API token",
            CredentialKind::ApiKey => "global API key",
            CredentialKind::ApiEmail => "API email",
            CredentialKind::WebhookUrl => "webhook URL",
        }
    }

    /// What the file or the variable must hold.
    fn content(self) -> &'static str {
        match self {
            CredentialKind::ApiToken => "the Cloudflare API token",
            CredentialKind::ApiKey => "the Cloudflare global API key",
            CredentialKind::ApiEmail => "the email address of the Cloudflare user",
            CredentialKind::WebhookUrl => "the webhook URL",
        }
    }

    /// What a valid one looks like, for "malformed" messages.
    fn shape(self) -> &'static str {
        match self {
            CredentialKind::ApiToken => {
                "a Cloudflare API token is a single word of letters, digits, '-' and '_' (about \
                 40 characters)"
            }
            CredentialKind::ApiKey => {
                "a Cloudflare global API key is a single word of hexadecimal digits (37 characters)"
            }
            CredentialKind::ApiEmail => {
                "an email address is a single word of printable ASCII with an '@'"
            }
            CredentialKind::WebhookUrl => {
                "a webhook URL is a single https:// URL (http:// only to a loopback host), \
                 without a user name or password"
            }
        }
    }

    fn file_key(self) -> &'static str {
        match self {
            CredentialKind::ApiToken => "api_token_file",
            CredentialKind::ApiKey => "api_key_file",
            CredentialKind::ApiEmail => "api_email_file",
            CredentialKind::WebhookUrl => "url_file",
        }
    }

    /// The name the examples give its systemd credential.
    fn systemd_name(self) -> &'static str {
        match self {
            CredentialKind::ApiToken => "cloudflare-token",
            CredentialKind::ApiKey => "cloudflare-api-key",
            CredentialKind::ApiEmail => "cloudflare-email",
            CredentialKind::WebhookUrl => "webhook-url",
        }
    }

    /// The table its keys are in, for "set [table] key" hints.
    fn table(self) -> &'static str {
        match self {
            CredentialKind::WebhookUrl => "[[notify]]",
            _ => "[cloudflare]",
        }
    }

    /// Whether others reading its file matters (the email is no secret).
    fn is_secret(self) -> bool {
        self != CredentialKind::ApiEmail
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// Why a credential could not be loaded. Each message names the credential and the file or
/// variable, and says what to do; none contains the value. Messages are complete on their own:
/// the I/O error is part of the message rather than a `source()`, because callers also log
/// this error with `to_string()`.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the {what} is empty")]
    Empty { what: CredentialKind },
    #[error(
        "the {what} contains whitespace, control or non-ASCII characters, or is otherwise not \
         one: {}",
        what.shape()
    )]
    Malformed { what: CredentialKind },
    /// Missing or forbidden: the hint is about where the file is and who may read it.
    #[error(
        "cannot read the {what} file {}: {error}; make sure it exists and is readable by \
         the user zt-janitor runs as (under systemd, prefer LoadCredential={}:<file> \
         with {} = \"%d/{}\")",
        path.display(),
        what.systemd_name(),
        what.file_key(),
        what.systemd_name()
    )]
    FileUnreadable {
        what: CredentialKind,
        path: PathBuf,
        error: io::Error,
    },
    /// Any other I/O error (too many open files, a directory, an I/O error): the error says it.
    #[error("cannot read the {what} file {}: {error}", path.display())]
    FileReadFailed {
        what: CredentialKind,
        path: PathBuf,
        error: io::Error,
    },
    #[error(
        "the {what} file {} is larger than {max} bytes, so it cannot hold just {} ({}); check \
         that {} names the right file",
        path.display(),
        what.content(),
        what.shape(),
        what.file_key()
    )]
    FileTooLarge {
        what: CredentialKind,
        path: PathBuf,
        max: u64,
    },
    #[error(
        "the {what} file {} is not UTF-8 text: it must hold {} as text (one line, optionally \
         ending with a newline)",
        path.display(),
        what.content()
    )]
    FileNotText { what: CredentialKind, path: PathBuf },
    #[error("the {what} file {} is empty: write {} into it", path.display(), what.content())]
    FileEmpty { what: CredentialKind, path: PathBuf },
    #[error(
        "the {what} file {} does not hold a single {what}: it must contain only {} (one line, \
         optionally ending with a newline); {}",
        path.display(),
        what.content(),
        what.shape()
    )]
    FileMalformed { what: CredentialKind, path: PathBuf },
    #[error(
        "{} {} points into the systemd credentials directory, but {CREDENTIALS_DIRECTORY} is \
         not set: run zt-janitor as a systemd service with LoadCredential=, or give the file's \
         full path",
        what.file_key(),
        path.display()
    )]
    NoCredentialsDirectory { what: CredentialKind, path: PathBuf },
    #[error(
        "the environment variable {name} is not set: export {} in it, or set {} {} to a file \
         that holds it",
        what.content(),
        what.table(),
        what.file_key()
    )]
    EnvUnset { what: CredentialKind, name: String },
    #[error(
        "the environment variable {name} is empty: put {} in it, or set {} {} to a file that \
         holds it",
        what.content(),
        what.table(),
        what.file_key()
    )]
    EnvEmpty { what: CredentialKind, name: String },
    #[error(
        "the environment variable {name} does not hold a single {what} (it contains \
         whitespace, control or non-ASCII characters, or invalid UTF-8): it must contain only \
         {}; {}",
        what.content(),
        what.shape()
    )]
    EnvMalformed { what: CredentialKind, name: String },
}

/// Why a text is not a credential; the caller says where the text came from.
enum Invalid {
    Empty,
    Malformed,
}

/// A token or a key: one word of printable ASCII.
fn secret_word(text: &str) -> Result<SecretString, Invalid> {
    if text.is_empty() {
        Err(Invalid::Empty)
    } else if !text.chars().all(|c| c.is_ascii_graphic()) {
        // Also catches invisible non-ASCII (a BOM, a zero-width space) that would otherwise
        // fail later, and obscurely, as an HTTP header.
        Err(Invalid::Malformed)
    } else {
        // `From<&str>` allocates exactly the text's length, so no unzeroed spare capacity.
        Ok(SecretString::from(text))
    }
}

/// `parse` applied to `raw` trimmed; `raw` is zeroed either way.
fn from_raw<T>(
    what: CredentialKind,
    mut raw: String,
    parse: impl Fn(&str) -> Result<T, Invalid>,
) -> Result<T, TokenError> {
    let parsed = parse(raw.trim());
    raw.zeroize();
    parsed.map_err(|e| match e {
        Invalid::Empty => TokenError::Empty { what },
        Invalid::Malformed => TokenError::Malformed { what },
    })
}

/// One credential, from `file` when it is set, else from the variable `env_name`.
fn load_one<T>(
    what: CredentialKind,
    file: Option<&Path>,
    env_name: &str,
    env: &impl Fn(&str) -> Option<OsString>,
    parse: impl Fn(&str) -> Result<T, Invalid>,
) -> Result<T, TokenError> {
    match file {
        Some(file) => read_file(
            what,
            &credentials_path(what, file, env(CREDENTIALS_DIRECTORY))?,
            parse,
        ),
        None => from_env(what, env_name, env(env_name), parse),
    }
}

/// Resolves a `%d/…` or `$CREDENTIALS_DIRECTORY/…` path against systemd's credentials directory.
fn credentials_path(
    what: CredentialKind,
    file: &Path,
    credentials_dir: Option<OsString>,
) -> Result<PathBuf, TokenError> {
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
            what,
            path: file.to_owned(),
        }),
    }
}

/// The most a credential file may hold. A Cloudflare API token is about 40 characters;
/// anything near this is some other file, and reading on (`/dev/zero`, a log file) would
/// exhaust memory or send the file as a header.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// The byte order mark some editors put at the start of a UTF-8 file.
const BOM: char = '\u{feff}';

fn read_file<T>(
    what: CredentialKind,
    path: &Path,
    parse: impl Fn(&str) -> Result<T, Invalid>,
) -> Result<T, TokenError> {
    let mut file = File::open(path).map_err(|e| file_error(what, path, e))?;
    // Checked on the opened file, so the mode is that of the file actually read.
    #[cfg(unix)]
    if what.is_secret() {
        use std::os::unix::fs::PermissionsExt;
        let mode = file
            .metadata()
            .map_err(|e| file_error(what, path, e))?
            .permissions()
            .mode();
        if let Some(warning) = permission_warning(what, mode, path) {
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
        return Err(file_error(what, path, e));
    }
    let path = path.to_owned();
    if bytes.len() as u64 > MAX_TOKEN_FILE_BYTES {
        bytes.zeroize();
        return Err(TokenError::FileTooLarge {
            what,
            path,
            max: MAX_TOKEN_FILE_BYTES,
        });
    }
    let mut text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            e.into_bytes().zeroize();
            return Err(TokenError::FileNotText { what, path });
        }
    };
    let parsed = parse(text.strip_prefix(BOM).unwrap_or(&text).trim());
    text.zeroize();
    parsed.map_err(|e| match e {
        Invalid::Empty => TokenError::FileEmpty { what, path },
        Invalid::Malformed => TokenError::FileMalformed { what, path },
    })
}

/// An I/O error on a credential file; the hint about existence and permissions only where it
/// applies.
fn file_error(what: CredentialKind, path: &Path, error: io::Error) -> TokenError {
    let path = path.to_owned();
    match error.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
            TokenError::FileUnreadable { what, path, error }
        }
        _ => TokenError::FileReadFailed { what, path, error },
    }
}

fn from_env<T>(
    what: CredentialKind,
    name: &str,
    value: Option<OsString>,
    parse: impl Fn(&str) -> Result<T, Invalid>,
) -> Result<T, TokenError> {
    let name = name.to_owned();
    let Some(value) = value else {
        return Err(TokenError::EnvUnset { what, name });
    };
    let value = match value.into_string() {
        Ok(value) => value,
        Err(value) => {
            value.into_encoded_bytes().zeroize();
            return Err(TokenError::EnvMalformed { what, name });
        }
    };
    from_raw(what, value, parse).map_err(|e| match e {
        TokenError::Empty { .. } => TokenError::EnvEmpty { what, name },
        _ => TokenError::EnvMalformed { what, name },
    })
}

/// A warning when a secret file's mode lets group or others read it. Not an error: Kubernetes
/// secret volumes are 0644 unless `defaultMode` is set, and refusing would break them.
#[cfg_attr(not(unix), allow(dead_code))]
fn permission_warning(what: CredentialKind, mode: u32, path: &Path) -> Option<String> {
    (mode & 0o077 != 0).then(|| {
        format!(
            "the {what} file {path} is accessible to other users (mode {mode:04o}): run \
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

    #[test]
    fn a_webhook_url_never_prints_and_must_be_https_or_loopback() {
        let url = "https://hooks.slack.com/services/T0/B0/xoxsecretpart";
        let env = |v: &'static str| move |n: &str| (n == "HOOK").then(|| OsString::from(v));
        let source = UrlSource::Env("HOOK".into());
        let loaded = WebhookUrl::load(&source, env(url)).unwrap();
        assert_eq!(loaded.expose(), url);
        assert_eq!(loaded.host(), "hooks.slack.com");
        for shown in [
            format!("{loaded:?}"),
            format!("{loaded}"),
            format!("{loaded:#?}"),
        ] {
            assert_eq!(shown, "[redacted]");
        }
        for bad in [
            "http://hooks.example.com/x",
            "ftp://hooks.example.com/x",
            "https://user:pw@hooks.example.com/x",
            "not a url",
        ] {
            let e = WebhookUrl::load(&source, env(bad))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("HOOK") && e.contains("webhook URL"), "{e}");
            assert!(!e.contains("hooks.example.com"), "{e}");
        }
        assert!(WebhookUrl::load(&source, env("http://127.0.0.1:9/x")).is_ok());
        let unset = WebhookUrl::load(&source, |_| None)
            .err()
            .unwrap()
            .to_string();
        assert!(unset.contains("[[notify]] url_file"), "{unset}");
    }

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

    /// The token `settings` name, through [`Credentials::load_with`].
    fn load_token(
        settings: &CloudflareSettings,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<ApiToken, TokenError> {
        match Credentials::load_with(settings, env)? {
            Credentials::ApiToken(token) => Ok(token),
            other => panic!("expected a token, got {other:?}"),
        }
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
            load_token(&settings(Some(&path), ""), no_env).unwrap_err(),
            load_token(&settings(None, "TOKEN"), |_| Some(bad.clone().into())).unwrap_err(),
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
            Err(TokenError::Empty { .. })
        ));
        assert!(matches!(
            ApiToken::new(" \n\t\n".into()),
            Err(TokenError::Empty { .. })
        ));
        assert!(matches!(
            ApiToken::new("a b".into()),
            Err(TokenError::Malformed { .. })
        ));
        assert!(matches!(
            ApiToken::new("a\nb\n".into()),
            Err(TokenError::Malformed { .. })
        ));
    }

    #[test]
    fn loads_from_file_and_reports_unreadable_or_empty_files() {
        let f = token_file(&format!("{SECRET}\n"));
        let path = f.path().to_str().unwrap();
        let token = load_token(&settings(Some(path), ""), no_env).unwrap();
        assert_eq!(token.expose(), SECRET);

        let empty = token_file("\n");
        let e = load_token(&settings(empty.path().to_str(), ""), no_env).unwrap_err();
        assert!(matches!(e, TokenError::FileEmpty { .. }), "{e:?}");

        let e = load_token(&settings(Some("/nonexistent/zt-token"), ""), no_env).unwrap_err();
        let message = e.to_string();
        assert!(message.contains("/nonexistent/zt-token"), "{message}");
        assert!(message.contains("No such file"), "{message}");
        assert!(message.contains("LoadCredential"), "{message}");
    }

    #[test]
    fn file_takes_precedence_over_the_env_var() {
        let f = token_file(SECRET);
        let s = settings(f.path().to_str(), "");
        let token = load_token(&s, |_| Some("from-env".into())).unwrap();
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
            let token = load_token(&settings(Some(file), ""), env).unwrap();
            assert_eq!(token.expose(), SECRET, "{file}");
        }
        let e = load_token(&settings(Some("%d/cloudflare-token"), ""), no_env).unwrap_err();
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
        let p = |s: &str| {
            credentials_path(CredentialKind::ApiToken, Path::new(s), dir.clone()).unwrap()
        };
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
        let unset = load_token(&s, no_env).unwrap_err();
        let empty = load_token(&s, |_| Some("\n".into())).unwrap_err();
        assert!(matches!(unset, TokenError::EnvUnset { .. }), "{unset:?}");
        assert!(matches!(empty, TokenError::EnvEmpty { .. }), "{empty:?}");
        for e in [unset, empty] {
            let message = e.to_string();
            assert!(message.contains("ZT_TEST_TOKEN"), "{message}");
            assert!(message.contains("api_token_file"), "{message}");
        }
        let token = load_token(&s, |name| {
            (name == "ZT_TEST_TOKEN").then(|| format!("{SECRET}\n").into())
        })
        .unwrap();
        assert_eq!(token.expose(), SECRET);
    }

    #[test]
    fn permission_warning_only_for_group_or_other_access() {
        let path = Path::new("/etc/zt-janitor/token");
        assert_eq!(
            permission_warning(CredentialKind::ApiToken, 0o100600, path),
            None
        );
        assert_eq!(
            permission_warning(CredentialKind::ApiToken, 0o100400, path),
            None
        );
        for mode in [0o100644, 0o100640, 0o100604, 0o100660] {
            let warning =
                permission_warning(CredentialKind::ApiToken, mode, path).expect("warning");
            assert!(warning.contains("/etc/zt-janitor/token"), "{warning}");
            assert!(warning.contains("chmod 600"), "{warning}");
        }
        assert!(permission_warning(CredentialKind::ApiToken, 0o100644, path)
            .unwrap()
            .contains("mode 0644"));
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef01234";
    const EMAIL: &str = "admin@example.com";

    /// `[cloudflare]` with `auth = "global_api_key"` and `keys` (TOML lines).
    fn global_key_settings(keys: &str) -> CloudflareSettings {
        let text = format!(
            "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\n\
             auth = \"global_api_key\"\n{keys}\
             [[rule]]\nname = \"r\"\nresource = \"device_registration\"\naction = \"delete\"\n\
             idle_days = 90\n"
        );
        crate::config::Config::from_toml_str(&text, Path::new("t.toml"))
            .unwrap()
            .cloudflare
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.into())
    }

    #[test]
    fn the_global_key_and_its_email_load_from_the_default_variables() {
        let env = env_of(&[
            ("CLOUDFLARE_EMAIL", "admin@example.com\n"),
            ("CLOUDFLARE_API_KEY", KEY),
            ("CLOUDFLARE_API_TOKEN", SECRET),
        ]);
        let credentials = Credentials::load_with(&global_key_settings(""), env).unwrap();
        assert!(!credentials.is_api_token());
        let Credentials::GlobalKey { email, key } = credentials else {
            panic!("{credentials:?}")
        };
        assert_eq!(email.as_str(), EMAIL);
        assert_eq!(key.expose(), KEY);

        let token = Credentials::load_with(&settings(None, "T"), env_of(&[("T", SECRET)]));
        assert!(token.unwrap().is_api_token());
    }

    #[test]
    fn the_global_key_and_its_email_load_from_files_in_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cloudflare-email"), format!("{EMAIL}\n")).unwrap();
        std::fs::write(dir.path().join("cloudflare-api-key"), format!("{KEY}\r\n")).unwrap();
        let settings = global_key_settings(
            "api_email_file = \"%d/cloudflare-email\"\napi_key_file = \"%d/cloudflare-api-key\"\n",
        );
        let credentials_dir = dir.path().to_str().unwrap();
        // The files win over the variables, as for the token.
        let env = env_of(&[
            ("CREDENTIALS_DIRECTORY", credentials_dir),
            ("CLOUDFLARE_EMAIL", "other@example.com"),
            ("CLOUDFLARE_API_KEY", "ffff"),
        ]);
        let Credentials::GlobalKey { email, key } = Credentials::load_with(&settings, env).unwrap()
        else {
            panic!("not a global key")
        };
        assert_eq!((email.as_str(), key.expose()), (EMAIL, KEY));

        let e = Credentials::load_with(&settings, no_env).unwrap_err();
        let message = e.to_string();
        assert!(
            message.starts_with("api_email_file %d/cloudflare-email points into the systemd"),
            "{message}"
        );
    }

    #[test]
    fn errors_name_the_credential_and_where_it_was_looked_for() {
        // (case, keys, environment, what the message must say)
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                "no email",
                "",
                &[("CLOUDFLARE_API_KEY", KEY)],
                "the environment variable CLOUDFLARE_EMAIL is not set: export the email address \
                 of the Cloudflare user in it, or set [cloudflare] api_email_file to a file that \
                 holds it",
            ),
            (
                "no key",
                "api_key_env = \"ZT_KEY\"\n",
                &[("CLOUDFLARE_EMAIL", EMAIL)],
                "the environment variable ZT_KEY is not set: export the Cloudflare global API \
                 key in it, or set [cloudflare] api_key_file",
            ),
            (
                "an email without @",
                "",
                &[("CLOUDFLARE_EMAIL", "admin"), ("CLOUDFLARE_API_KEY", KEY)],
                "the environment variable CLOUDFLARE_EMAIL does not hold a single API email",
            ),
            (
                "an email with a space",
                "",
                &[
                    ("CLOUDFLARE_EMAIL", "ad min@example.com"),
                    ("CLOUDFLARE_API_KEY", KEY),
                ],
                "an email address is a single word of printable ASCII with an '@'",
            ),
            (
                "an empty key",
                "",
                &[("CLOUDFLARE_EMAIL", EMAIL), ("CLOUDFLARE_API_KEY", " \n")],
                "the environment variable CLOUDFLARE_API_KEY is empty: put the Cloudflare global \
                 API key in it",
            ),
            (
                "a missing key file",
                "api_key_file = \"/nonexistent/zt-key\"\n",
                &[("CLOUDFLARE_EMAIL", EMAIL)],
                "cannot read the global API key file /nonexistent/zt-key: No such file",
            ),
        ];
        for (case, keys, env, expected) in cases {
            let e = Credentials::load_with(&global_key_settings(keys), env_of(env)).unwrap_err();
            let message = e.to_string();
            assert!(message.contains(expected), "{case}: {message}");
        }
        let e = Credentials::load_with(
            &global_key_settings("api_key_file = \"/nonexistent/zt-key\"\n"),
            env_of(&[("CLOUDFLARE_EMAIL", EMAIL)]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains(
                "LoadCredential=cloudflare-api-key:<file> with api_key_file = \"%d/cloudflare-api-key\""
            ),
            "{e}"
        );
    }

    #[test]
    fn the_key_never_appears_when_formatted_or_in_errors() {
        #[derive(Debug)]
        #[allow(dead_code)] // only read through Debug
        struct Holder {
            credentials: Credentials,
        }
        let key = ApiKey::new(format!("{KEY}\n")).unwrap();
        let credentials = Credentials::GlobalKey {
            email: ApiEmail::new(EMAIL.into()).unwrap(),
            key: key.clone(),
        };
        let holder = Holder { credentials };
        let error = anyhow::anyhow!("request with {key} failed").context(format!("{key:?}"));
        for out in [
            format!("{key}"),
            format!("{key:?}"),
            format!("{key:#?}"),
            format!("{holder:?}"),
            format!("{holder:#?}"),
            format!("{error:#}"),
            format!("{error:?}"),
        ] {
            assert!(!out.contains(KEY), "key leaked in {out:?}");
            assert!(out.contains("[redacted]"), "no placeholder in {out:?}");
        }
        assert_eq!(key.expose(), KEY);

        // A bad key, from a file and from the environment: the message never quotes it.
        let bad = format!("{KEY} {KEY}\n");
        let f = token_file(&bad);
        let file_keys = format!("api_key_file = {:?}\n", f.path().to_str().unwrap());
        let errors = [
            ApiKey::new(bad.clone()).unwrap_err(),
            Credentials::load_with(
                &global_key_settings(&file_keys),
                env_of(&[("CLOUDFLARE_EMAIL", EMAIL)]),
            )
            .unwrap_err(),
            Credentials::load_with(
                &global_key_settings(""),
                env_of(&[("CLOUDFLARE_EMAIL", EMAIL), ("CLOUDFLARE_API_KEY", &bad)]),
            )
            .unwrap_err(),
        ];
        for e in errors {
            for out in [e.to_string(), format!("{e:?}")] {
                assert!(!out.contains(KEY), "key leaked in {out:?}");
            }
        }
    }

    #[test]
    fn only_secret_files_are_checked_for_their_mode() {
        let path = Path::new("/etc/zt-janitor/key");
        let warning = permission_warning(CredentialKind::ApiKey, 0o100644, path).unwrap();
        assert!(
            warning.starts_with("the global API key file /etc/zt-janitor/key is accessible"),
            "{warning}"
        );
        assert!(CredentialKind::ApiKey.is_secret() && CredentialKind::ApiToken.is_secret());
        assert!(!CredentialKind::ApiEmail.is_secret());
    }

    const HINT: &str = "make sure it exists";

    fn load_file(path: &Path) -> Result<ApiToken, TokenError> {
        load_token(&settings(path.to_str(), ""), no_env)
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
        let env = load_token(&settings(None, "T"), |_| {
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
            let message = file_error(CredentialKind::ApiToken, path, error).to_string();
            assert_eq!(message.contains(HINT), hint, "{case}: {message}");
            assert!(message.contains(&shown), "{case}: {message}");
            assert!(
                message.contains("/etc/zt-janitor/token"),
                "{case}: {message}"
            );
        }
    }
}
