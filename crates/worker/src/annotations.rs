//! The pod's annotations as the downward API writes them into a volume file, and the exit
//! decision taken from them between tasks.
//!
//! The file has one line per annotation, `key="value"`, sorted by key, the value quoted as Go's
//! `%q` (`strconv.Quote`) does: `\"`, `\\`, `\n`, `\t`, `\xNN`, `\uNNNN`, ... escapes.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ExitReason;
pub use workerpool_queue::protocol::{
    CURRENT_HASH_ANNOTATION, DEFAULT_ANNOTATIONS_FILE, DRAIN_ANNOTATION,
};

/// Parses a downward-API annotations file. Lines that are not `key="quoted value"` are skipped
/// (with a warning); a later duplicate key wins.
pub fn parse_annotations(text: &str) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match parse_line(line) {
            Some((key, value)) => {
                annotations.insert(key, value);
            }
            None => tracing::warn!(line = number + 1, "skipping malformed annotation line"),
        }
    }
    annotations
}

fn parse_line(line: &str) -> Option<(String, String)> {
    let (key, quoted) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() {
        return None;
    }
    Some((key.to_owned(), unquote(quoted.trim())?))
}

/// Reverses Go's `strconv.Quote`: a double-quoted string with Go escapes. `None` if malformed.
pub fn unquote(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    // Bytes, because `\xNN` and octal escapes are single bytes of a UTF-8 sequence.
    let mut out: Vec<u8> = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return None,
            '\\' => {
                let escape = chars.next()?;
                match escape {
                    'a' => out.push(0x07),
                    'b' => out.push(0x08),
                    'f' => out.push(0x0c),
                    'n' => out.push(b'\n'),
                    'r' => out.push(b'\r'),
                    't' => out.push(b'\t'),
                    'v' => out.push(0x0b),
                    '\\' => out.push(b'\\'),
                    '"' => out.push(b'"'),
                    '\'' => out.push(b'\''),
                    'x' => out.push(u8::try_from(hex(&mut chars, 2)?).ok()?),
                    'u' => push_char(&mut out, char::from_u32(hex(&mut chars, 4)?)?),
                    'U' => push_char(&mut out, char::from_u32(hex(&mut chars, 8)?)?),
                    '0'..='7' => {
                        let mut value = escape.to_digit(8)?;
                        for _ in 0..2 {
                            value = value * 8 + chars.next()?.to_digit(8)?;
                        }
                        out.push(u8::try_from(value).ok()?);
                    }
                    _ => return None,
                }
            }
            c => push_char(&mut out, c),
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn hex(chars: &mut std::str::Chars<'_>, digits: usize) -> Option<u32> {
    let mut value = 0u32;
    for _ in 0..digits {
        value = value.checked_mul(16)? + chars.next()?.to_digit(16)?;
    }
    Some(value)
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// Reads the annotations file; a missing file means no annotations (e.g. outside Kubernetes).
pub fn read_annotations(path: &Path) -> io::Result<BTreeMap<String, String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_annotations(&text)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(err) => Err(err),
    }
}

/// Whether the annotations ask this worker to leave: drain requested (non-empty
/// [`DRAIN_ANNOTATION`]) or a stale pod-spec hash ([`CURRENT_HASH_ANNOTATION`] present and
/// different from `own_hash`; never stale when `own_hash` is unknown).
pub fn exit_decision(
    annotations: &BTreeMap<String, String>,
    own_hash: Option<&str>,
) -> Option<ExitReason> {
    if annotations
        .get(DRAIN_ANNOTATION)
        .is_some_and(|v| !v.is_empty())
    {
        return Some(ExitReason::Drained);
    }
    match (annotations.get(CURRENT_HASH_ANNOTATION), own_hash) {
        (Some(current), Some(own)) if !current.is_empty() && current != own => {
            Some(ExitReason::StaleHash)
        }
        _ => None,
    }
}

/// Re-reads the annotations file at most once per interval and remembers the last decision.
#[derive(Debug)]
pub(crate) struct AnnotationWatch {
    path: PathBuf,
    own_hash: Option<String>,
    interval: Duration,
    last_read: Option<Instant>,
    decision: Option<ExitReason>,
}

impl AnnotationWatch {
    pub(crate) fn new(path: PathBuf, own_hash: Option<String>, interval: Duration) -> Self {
        Self {
            path,
            own_hash,
            interval,
            last_read: None,
            decision: None,
        }
    }

    /// The exit decision, re-reading the file if the last read is older than the interval.
    pub(crate) fn check(&mut self) -> Option<ExitReason> {
        if self
            .last_read
            .is_some_and(|at| at.elapsed() < self.interval)
        {
            return self.decision;
        }
        self.last_read = Some(Instant::now());
        match read_annotations(&self.path) {
            Ok(annotations) => {
                self.decision = exit_decision(&annotations, self.own_hash.as_deref());
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot read the annotations file");
            }
        }
        self.decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_downward_api_file() {
        let text = concat!(
            "kubernetes.io/config.seen=\"2024-01-01T00:00:00.000000000Z\"\n",
            "note=\"say \\\"hi\\\"\\n\\ttab \\\\ back\"\n",
            "quickube.com/current-pod-spec-hash=\"abc123\"\n",
            "quickube.com/drain=\"true\"\n",
            "\n",
            "unicode=\"caf\u{e9} \\u00e9 \\U0001F600 \\xc3\\xa9 \\303\\251\"\n",
            "empty=\"\"\n",
            "eq=\"a=b\"\n",
        );
        let a = parse_annotations(text);
        assert_eq!(a.len(), 7);
        assert_eq!(a["note"], "say \"hi\"\n\ttab \\ back");
        assert_eq!(a[CURRENT_HASH_ANNOTATION], "abc123");
        assert_eq!(a[DRAIN_ANNOTATION], "true");
        assert_eq!(a["unicode"], "caf\u{e9} \u{e9} \u{1F600} \u{e9} \u{e9}");
        assert_eq!(a["empty"], "");
        assert_eq!(a["eq"], "a=b");
    }

    #[test]
    fn skips_malformed_lines() {
        let text = "good=\"1\"\nnoequals\nunquoted=1\nbad=\"unterminated\nbadescape=\"\\q\"\n=\"nokey\"\ninner=\"a\"b\"\nlast=\"2\"";
        let a = parse_annotations(text);
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(a["good"], "1");
        assert_eq!(a["last"], "2");
        assert_eq!(unquote("\"\\x4\""), None);
        assert_eq!(unquote("\"\\u12\""), None);
        assert_eq!(unquote("\"\\uD800\""), None);
    }

    #[test]
    fn missing_file_means_no_annotations() {
        let path = std::env::temp_dir().join(format!(
            "qworker-missing-{}-annotations",
            std::process::id()
        ));
        assert!(read_annotations(&path).is_ok_and(|a| a.is_empty()));
        let mut watch = AnnotationWatch::new(path, Some("h".into()), Duration::ZERO);
        assert_eq!(watch.check(), None);
    }

    #[test]
    fn decides_drain_and_stale_hash() {
        let of = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(exit_decision(&of(&[]), Some("h")), None);
        assert_eq!(
            exit_decision(&of(&[(DRAIN_ANNOTATION, "")]), Some("h")),
            None
        );
        assert_eq!(
            exit_decision(&of(&[(DRAIN_ANNOTATION, "scale-down")]), Some("h")),
            Some(ExitReason::Drained)
        );
        assert_eq!(
            exit_decision(&of(&[(CURRENT_HASH_ANNOTATION, "h")]), Some("h")),
            None
        );
        assert_eq!(
            exit_decision(&of(&[(CURRENT_HASH_ANNOTATION, "new")]), Some("h")),
            Some(ExitReason::StaleHash)
        );
        assert_eq!(
            exit_decision(&of(&[(CURRENT_HASH_ANNOTATION, "new")]), None),
            None
        );
        assert_eq!(
            exit_decision(&of(&[(CURRENT_HASH_ANNOTATION, "")]), Some("h")),
            None
        );
    }

    #[test]
    fn watch_rereads_file_after_interval() {
        let path = std::env::temp_dir().join(format!(
            "qworker-watch-{}-{:?}-annotations",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, "quickube.com/current-pod-spec-hash=\"h1\"\n").expect("write");
        let mut watch =
            AnnotationWatch::new(path.clone(), Some("h1".into()), Duration::from_millis(50));
        assert_eq!(watch.check(), None);
        std::fs::write(&path, "quickube.com/drain=\"1\"\n").expect("write");
        assert_eq!(watch.check(), None, "cached within the interval");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(watch.check(), Some(ExitReason::Drained));
        let _ = std::fs::remove_file(&path);
    }
}
