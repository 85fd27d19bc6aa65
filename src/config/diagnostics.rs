//! Explaining a bad file: the `toml` crate's errors turned into `file:line:col: key: message`,
//! with the key named, "did you mean" for typos, the valid keys listed, and TOML type names
//! put in words.
//!
//! The `toml` crate stops at the first unknown key or wrong type. To report them all, each one
//! found is blanked out of a copy of the text (replaced by spaces, so that every other offset
//! stays where it was) and the copy parsed again. A syntax error stops the search: past it,
//! nothing is reliable.

use std::fmt;
use std::ops::Range;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::raw::{RawConfig, Sp};
use super::validate::{Validator, TOP};
use super::Diagnostic;

/// How many unknown keys and wrong types one load reports at most.
const MAX_SHAPE_ERRORS: usize = 100;

impl Validator<'_> {
    /// The file as serde reads it, with every unknown key and wrong type recorded and left
    /// out; `None` after a syntax error, or when one could not be left out cleanly.
    pub(super) fn parse(&self) -> Option<RawConfig> {
        let mut text = self.text.to_owned();
        for round in 0..MAX_SHAPE_ERRORS {
            let error = match toml::from_str::<RawConfig>(&text) {
                Ok(raw) => return Some(raw),
                Err(error) => error,
            };
            let message = error.message();
            let shape =
                message.starts_with("unknown field ") || message.starts_with("invalid type: ");
            // After a blanking, a syntax error is the blanking's doing, not the file's.
            if round > 0 && !shape {
                return None;
            }
            self.report(self.toml_error(&error));
            let extent = error
                .span()
                .filter(|_| shape)
                .and_then(|span| key_value_extent(&text, span, message));
            let extent = extent?;
            let blank: String = text[extent.clone()]
                .chars()
                .map(|c| if c == '\n' { '\n' } else { ' ' })
                .collect();
            // Same length in bytes only if every blanked character is one byte: otherwise
            // offsets would move, so stop rather than misplace later errors.
            if blank.len() != extent.len() {
                return None;
            }
            text.replace_range(extent, &blank);
        }
        None
    }

    /// Turns an error of the `toml` crate (syntax, wrong type, unknown key) into a located
    /// problem, naming the key it is about.
    pub(super) fn toml_error(&self, error: &toml::de::Error) -> Diagnostic {
        let span = error.span().unwrap_or(TOP);
        let message = error.message().trim();
        if let Some(rest) = message.strip_prefix("unknown field ") {
            let names = backticked(rest);
            let (unknown, expected) = names.split_first().map_or(("", &[][..]), |(u, e)| (*u, e));
            let mut segments = key_segments(self.text, span.start).unwrap_or_default();
            segments.push(unknown.to_owned());
            return self.error(
                span,
                render_key(&segments),
                unknown_key_message(unknown, expected),
            );
        }
        if let Some(rest) = message.strip_prefix("invalid type: ") {
            let key = key_segments(self.text, span.start)
                .filter(|segments| !segments.is_empty())
                .map_or_else(
                    || line_key(self.text, span.start),
                    |segments| render_key(&segments),
                );
            return self.error(span, key, wrong_type_message(rest));
        }
        // Syntax errors: the document has no key tree, so name the key from the line itself.
        let key = line_key(self.text, span.start);
        let mut message = message.replace('\n', "; ");
        if message.starts_with("duplicate key") {
            message += "; remove one of them";
        }
        self.error(span, key, message)
    }
}

/// Where the `key = value` an unknown-key or wrong-type error is about lies in `text`, when
/// it is written on lines of its own (not inside an inline table or array, not a `[table]`
/// header): from its key to the end of its value.
fn key_value_extent(text: &str, span: Range<usize>, message: &str) -> Option<Range<usize>> {
    let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..span.start];
    if message.starts_with("unknown field ") {
        // The span is the key; its value is the next one in the key tree.
        if !before.trim().is_empty() {
            return None;
        }
        let end = value_after(text, span.start)?;
        Some(span.start..end)
    } else {
        // The span is the value, after `key =` on the same line.
        let (key, rest) = before.split_once('=')?;
        let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if !rest.trim().is_empty() || key.trim().is_empty() || !key.trim().chars().all(bare) {
            return None;
        }
        Some(line_start..span.end)
    }
}

/// The end of the first value that starts after `offset` in the innermost table around it.
fn value_after(text: &str, offset: usize) -> Option<usize> {
    let root = toml::from_str::<Sp<Node>>(text).ok()?;
    let mut node = &root;
    loop {
        let child = match node.get_ref() {
            Node::Table(entries) => entries
                .iter()
                .map(|(_, value)| value)
                .find(|value| encloses(text, value.span(), offset)),
            Node::Array(items) => items
                .iter()
                .find(|item| encloses(text, item.span(), offset)),
            Node::Leaf => None,
        };
        match child {
            Some(child) if child.span().start < offset => node = child,
            _ => break,
        }
    }
    let Node::Table(entries) = node.get_ref() else {
        return None;
    };
    let value = entries
        .iter()
        .map(|(_, value)| value.span())
        .filter(|span| span.start > offset)
        .min_by_key(|span| span.start)?;
    // A value on another line is not this key's.
    (!text[offset..value.start].contains('\n')).then_some(value.end)
}

/// Whether a problem at `key` may be only a consequence of leaving out the key a shape error
/// (unknown key, wrong type) was about: the same key (now "missing"), the whole table ("this
/// rule selects nothing"), anything in the same rule or exclusion (whose checks depend on
/// each other), or anything in a table that was itself left out.
pub(super) fn follows_from(shape_key: &str, key: &str) -> bool {
    let (shape_table, shape_field) = split_key(shape_key);
    let (table, field) = split_key(key);
    shape_key == key
        || (shape_table == table
            && (shape_field.is_empty() || field.is_empty() || key.starts_with("[[")))
}

/// `[[rule]] #2 name` → (`rule #2`, `name`), `[cloudflare] per_page` → (`cloudflare`,
/// `per_page`), `safety` → (`safety`, ``).
fn split_key(key: &str) -> (String, &str) {
    let (table, field) = if key.starts_with("[[") {
        // The table is the entry: `[[rule]] #2`.
        match key.match_indices(' ').nth(1) {
            Some((i, _)) => (&key[..i], &key[i + 1..]),
            None => (key, ""),
        }
    } else {
        key.split_once(' ').unwrap_or((key, ""))
    };
    (table.replace(['[', ']'], ""), field)
}

fn unknown_key_message(unknown: &str, expected: &[&str]) -> String {
    if let Some(message) = literal_credential_message(unknown) {
        return message.to_owned();
    }
    let mut message = format!("unknown key {unknown:?}");
    if let Some(suggestion) = closest(unknown, expected) {
        message += &format!("; did you mean {suggestion:?}?");
    }
    if expected.is_empty() {
        message += "; remove it";
    } else {
        message += &format!(" (valid keys here: {})", expected.join(", "));
    }
    message
}

/// For a key that would hold a credential itself: where the credential goes instead.
fn literal_credential_message(key: &str) -> Option<&'static str> {
    match key {
        "api_token" | "token" | "apitoken" => Some(
            "tokens never go in the config file; put the token in a file and set \
             api_token_file = \"<path>\" (with systemd: LoadCredential= and \"%d/<name>\"), \
             or export it in the environment variable named by api_token_env \
             (default CLOUDFLARE_API_TOKEN)",
        ),
        "api_key" | "apikey" | "auth_key" | "global_api_key" | "x_auth_key" => Some(
            "API keys never go in the config file; with auth = \"global_api_key\", put the key \
             in a file and set api_key_file = \"<path>\" (with systemd: LoadCredential= and \
             \"%d/<name>\"), or export it in the environment variable named by api_key_env \
             (default CLOUDFLARE_API_KEY); a scoped API token (api_token_file) is safer",
        ),
        "api_email" | "auth_email" | "x_auth_email" => Some(
            "the API email does not go in the config file either; with auth = \
             \"global_api_key\", put it in a file and set api_email_file = \"<path>\", or export \
             it in the environment variable named by api_email_env (default CLOUDFLARE_EMAIL)",
        ),
        _ => None,
    }
}

/// The expected name a typo most likely meant: within two edits, or one the typo begins.
fn closest<'a>(typo: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|name| (edit_distance(typo, name), *name))
        .filter(|(distance, name)| *distance <= 2 || (typo.len() >= 4 && name.starts_with(typo)))
        .min()
        .map(|(_, name)| name)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// `string "5", expected i64` → a sentence about TOML types, with a fix when it is obvious.
fn wrong_type_message(detail: &str) -> String {
    let (found, expected) = detail.split_once(", expected ").unwrap_or((detail, "?"));
    let expected = match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" => "a string in quotes",
        "a sequence" => "an array such as [\"a\", \"b\"]",
        other if other.starts_with("struct ") || other == "a map" => "a table",
        other => other,
    };
    let found = found
        .replacen("floating point", "number", 1)
        .replacen("sequence", "array", 1)
        .replacen("map", "table", 1);
    let hint = match found.strip_prefix("string ") {
        Some(text) if expected.starts_with("an array") => format!("; put it in brackets: [{text}]"),
        Some(_) if !expected.starts_with("a string") && expected != "a table" => {
            "; remove the quotes".to_owned()
        }
        _ => String::new(),
    };
    format!("wrong type: found {found}, expected {expected}{hint}")
}

/// The names between backticks in a serde message, in order.
fn backticked(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// For a syntax error: the key written at the start of the error's line, else a generic label.
fn line_key(text: &str, offset: usize) -> String {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() && !key.trim().starts_with('[') => {
            key.trim().to_owned()
        }
        _ => "TOML syntax".to_owned(),
    }
}

// ---- Naming the key a `toml` error points at. ----
//
// The `toml` crate reports a span but not the key path of a type or unknown-key error. The
// document is parsed a second time into this key tree (which accepts any value) and the span
// is looked up in it.

/// Any TOML value, reduced to its structure and spans.
enum Node {
    Table(Vec<(String, Sp<Node>)>),
    Array(Vec<Sp<Node>>),
    Leaf,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            // A date-time arrives as a one-entry map with a private key and an unspanned
            // value; it is a leaf to us.
            if key.starts_with("$__toml_private") {
                map.next_value::<IgnoredAny>()?;
                return Ok(Node::Leaf);
            }
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Table(entries))
    }
}

/// The path of keys down to the innermost value that contains `offset`, array elements as
/// `#N`; `None` if the document does not parse.
fn key_segments(text: &str, offset: usize) -> Option<Vec<String>> {
    let root = toml::from_str::<Sp<Node>>(text).ok()?;
    let mut segments = Vec::new();
    let mut node = root.get_ref();
    loop {
        let next = match node {
            Node::Table(entries) => entries
                .iter()
                .find(|(_, value)| encloses(text, value.span(), offset))
                .map(|(key, value)| (key.clone(), value)),
            Node::Array(items) => items
                .iter()
                .enumerate()
                .find(|(_, item)| encloses(text, item.span(), offset))
                .map(|(index, item)| (format!("#{}", index + 1), item)),
            Node::Leaf => None,
        };
        let Some((segment, child)) = next else { break };
        segments.push(segment);
        node = child.get_ref();
    }
    Some(segments)
}

/// Whether `offset` is inside the value at `span` but not on the name in that value's own
/// `[table]` header: an unknown-key error points at that name, and the key is the parent's.
fn encloses(text: &str, span: Range<usize>, offset: usize) -> bool {
    let inside = span.contains(&offset) || span.start == offset;
    let on_own_header = text.get(span.start..offset).is_some_and(|between| {
        between.starts_with('[') && between.trim_start_matches(['[', ' ', '\t']).is_empty()
    });
    inside && !on_own_header
}

/// `["rule", "#2", "idle_days"]` → `[[rule]] #2 idle_days`, `["cloudflare", "per_page"]` →
/// `[cloudflare] per_page`; indexes into value arrays are dropped (`user_email`).
fn render_key(segments: &[String]) -> String {
    let Some((first, rest)) = segments.split_first() else {
        return String::new();
    };
    let (head, rest) = match rest.split_first() {
        Some((index, rest)) if index.starts_with('#') => (format!("[[{first}]] {index}"), rest),
        Some(_) => (format!("[{first}]"), rest),
        None => return first.clone(),
    };
    let tail: Vec<&str> = rest
        .iter()
        .filter(|s| !s.starts_with('#'))
        .map(String::as_str)
        .collect();
    if tail.is_empty() {
        head
    } else {
        format!("{head} {}", tail.join("."))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::fixtures::{load, MINIMAL};

    #[test]
    fn columns_count_characters_not_bytes() {
        let e = load(&format!(
            "{MINIMAL}[[exclude]]\ndevice_name = [\"café-*\", \"[\"]\n"
        ))
        .unwrap_err();
        assert!(e.to_string().starts_with("zt.toml:10:26: "), "{e}");
    }
}
