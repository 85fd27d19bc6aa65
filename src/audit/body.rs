//! How a snapshot body is stored (issue 14, bounded growth): compressed with zstd against a
//! built-in dictionary, since a body is mostly field names and timestamps, and small objects
//! compress poorly on their own (over the bench's registrations: to 68% alone, 38% with the
//! dictionary, at 3 µs a body).
//!
//! The dictionary (`body-dictionary-v1.zdict`) is zstd's `ZDICT_finalizeDictionary` of a
//! content of one object of each kind the janitor lists, with generic values (every field
//! name of the kinds in `cloudflare-schemas.json`, ids zeroed, times at 2026-01-01), and of
//! entropy statistics taken at level 1 from 1,150 objects of all four kinds that the fake API
//! serves with `--seed 1` (the bench uses seed 7).
//!
//! `snapshot_bodies.body` holds either form, told apart by the first byte: a JSON text (as
//! written before this encoding, by old databases, or when compressing does not make it
//! shorter) never starts with byte 0x01; an encoded body is `0x01` and a zstd frame made with
//! dictionary v1. The dictionary can therefore never change: a new one needs a new tag byte.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Mutex;

use thiserror::Error;

/// Dictionary v1 (see above).
const DICTIONARY_V1: &[u8] = include_bytes!("body-dictionary-v1.zdict");
const TAG_ZSTD_V1: u8 = 0x01;
/// zstd level: what the dictionary's statistics were taken for; level 3 compresses no better.
const LEVEL: i32 = 1;
/// The largest body decoded: far above any object Cloudflare lists, far below what would hurt.
const MAX_BODY: usize = 64 << 20;

#[derive(Debug, Error)]
pub enum BodyError {
    #[error("a stored snapshot body cannot be decompressed: {0}")]
    Corrupt(String),
    #[error("a stored snapshot body is not UTF-8 text")]
    NotText,
}

/// How a run's snapshot bodies are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyForm {
    /// Compressed (plan mode): its decisions become spans, kept for as long as the object
    /// stays as it is, and nothing waits on them.
    Compressed,
    /// As listed (apply mode): the run's actions wait for its decisions to be durable, and
    /// compressing costs the cycle about 5% of its CPU; the rows of a run that acted are
    /// kept as they were before bodies were compressed.
    AsListed,
}

/// One compressor for the process: decisions are recorded one batch at a time, and a context
/// with the dictionary loaded is worth keeping (and not one per worker thread).
static COMPRESSOR: Mutex<Option<Compressor>> = Mutex::new(None);

thread_local! {
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

struct Compressor {
    zstd: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

/// `body` compressed, if that makes it shorter; stored as its text otherwise.
pub(crate) fn compress(body: &str) -> Option<Vec<u8>> {
    let mut guard = COMPRESSOR.lock().unwrap_or_else(|e| e.into_inner());
    let c = match &mut *guard {
        Some(c) => c,
        slot => slot.insert(Compressor {
            zstd: zstd::bulk::Compressor::with_dictionary(LEVEL, DICTIONARY_V1).ok()?,
            scratch: Vec::new(),
        }),
    };
    c.scratch.clear();
    c.scratch
        .reserve(zstd::zstd_safe::compress_bound(body.len()));
    let n = c
        .zstd
        .compress_to_buffer(body.as_bytes(), &mut c.scratch)
        .ok()?;
    (n + 1 < body.len()).then(|| {
        let mut out = Vec::with_capacity(n + 1);
        out.push(TAG_ZSTD_V1);
        out.extend_from_slice(&c.scratch[..n]);
        out
    })
}

/// The body text of a stored body, in either form.
pub fn decode(stored: &[u8]) -> Result<String, BodyError> {
    String::from_utf8(decompressed(stored)?.into_owned()).map_err(|_| BodyError::NotText)
}

/// The body bytes of a stored body, for hashing: a body that cannot be decoded is hashed as it
/// is stored, so that verify reports it as changed rather than failing.
pub(crate) fn decoded_bytes(stored: &[u8]) -> Cow<'_, [u8]> {
    decompressed(stored).unwrap_or(Cow::Borrowed(stored))
}

/// The bytes of a stored body: the frame decompressed, or the text as it is.
fn decompressed(stored: &[u8]) -> Result<Cow<'_, [u8]>, BodyError> {
    match stored.split_first() {
        Some((&TAG_ZSTD_V1, frame)) => decompress(frame).map(Cow::Owned),
        _ => Ok(Cow::Borrowed(stored)),
    }
}

fn decompress(frame: &[u8]) -> Result<Vec<u8>, BodyError> {
    let corrupt = |e: &dyn std::fmt::Display| BodyError::Corrupt(e.to_string());
    // The frame names its size; a frame without it, or larger than any body, is not ours.
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) if size <= MAX_BODY as u64 => size as usize,
        Ok(Some(size)) => return Err(corrupt(&format!("it claims {size} bytes"))),
        Ok(None) => return Err(corrupt(&"its frame does not name its size")),
        Err(e) => return Err(corrupt(&format!("{e:?}"))),
    };
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        let d = match &mut *d {
            Some(d) => d,
            slot => slot.insert(
                zstd::bulk::Decompressor::with_dictionary(DICTIONARY_V1)
                    .map_err(|e| corrupt(&e))?,
            ),
        };
        let text = d.decompress(frame, size).map_err(|e| corrupt(&e))?;
        if text.len() == size {
            Ok(text)
        } else {
            Err(corrupt(&"its size differs from what its frame names"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn encode(body: &str) -> Vec<u8> {
        compress(body).unwrap_or_else(|| body.as_bytes().to_vec())
    }

    const REGISTRATION: &str = r#"{"id":"0000d9a4-5eb8-4bd1-a512-1d1a4650608a","created_at":"2024-06-13T09:17:13.111209Z","updated_at":"2025-02-01T01:46:53.395970Z","last_seen_at":"2025-02-01T01:46:53.395970Z","key":"BOEUGM48ABokUtpnl3z9zQjJ55M50TcpmYfuM5YdxJgUD3SmYa681G/oVGLn5VxO4xEQHi+ucHXf7W9IgwBYaQo=","registration_type":"warp","device":{"id":"9e7d1bb7-61a2-473b-b0c2-63afe376e4b7","name":"laptop-13997","client_version":"2025.9.558.0"},"user":{"id":"06e874dc-292e-4abb-94b5-548271556bef","email":"user5964@example.com","name":"User 5964"},"revoked_at":null,"deleted_at":null,"key_type":"secp256r1","tunnel_type":"masque","virtual_ipv4":"100.64.109.136","virtual_ipv6":"2606:4700:110:8000::6d88"}"#;

    #[test]
    fn the_dictionary_never_changes() {
        // Stored bodies need this exact dictionary to be read: a changed file is a new version.
        assert_eq!(
            format!("{:x}", Sha256::digest(DICTIONARY_V1)),
            "14f3f6b58a823796139246db578acaf0294ad772bdaf693f3ebd7a921be0255e"
        );
    }

    #[test]
    fn a_body_reads_back_byte_identical_and_smaller() {
        let stored = encode(REGISTRATION);
        assert_eq!(stored[0], TAG_ZSTD_V1);
        assert!(stored.len() * 2 < REGISTRATION.len(), "{}", stored.len());
        assert_eq!(decode(&stored).unwrap(), REGISTRATION);
        assert_eq!(&*decoded_bytes(&stored), REGISTRATION.as_bytes());
    }

    #[test]
    fn a_short_or_incompressible_body_is_stored_as_its_text() {
        for body in ["null", "{}", "\"é\""] {
            assert_eq!(encode(body), body.as_bytes());
            assert_eq!(decode(body.as_bytes()).unwrap(), body);
        }
    }

    #[test]
    fn a_damaged_body_is_an_error_not_a_panic() {
        let mut stored = encode(REGISTRATION);
        let n = stored.len();
        stored[n / 2] ^= 0xff;
        stored.truncate(n - 3);
        assert!(decode(&stored).is_err());
        assert_eq!(&*decoded_bytes(&stored), &stored[..]);
        for hostile in [
            &[TAG_ZSTD_V1][..],
            &[TAG_ZSTD_V1, 0x28, 0xb5, 0x2f, 0xfd][..],
            &[0xff, 0xfe][..],
        ] {
            assert!(decode(hostile).is_err(), "{hostile:?}");
        }
    }
}
