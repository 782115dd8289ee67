//! Container output in kubelet's CRI log format: one line per record,
//! `<RFC 3339 nanosecond UTC time> <stdout|stderr> <F|P> <text>`, where a line longer than
//! 16 KiB is cut into `P` (partial) pieces ended by an `F` one. crisp's monitor writes it
//! for host containers, its guest agent for containers in a VM.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// The longest piece written as one record.
pub const MAX_LINE: usize = 16 * 1024;

/// Splits `data` into lines: full ones tagged F; a line longer than [`MAX_LINE`] is
/// written in P pieces, as kubelet's reader expects. `partial` holds what is left of a
/// line not ended yet, for the next call.
pub fn emit(log: &mut LogWriter, stream: &str, partial: &mut Vec<u8>, data: &[u8]) {
    for chunk in data.split_inclusive(|b| *b == b'\n') {
        if let Some(line) = chunk.strip_suffix(b"\n") {
            partial.extend_from_slice(line);
            log.line(stream, 'F', partial);
            partial.clear();
        } else {
            partial.extend_from_slice(chunk);
            while partial.len() >= MAX_LINE {
                let rest = partial.split_off(MAX_LINE);
                log.line(stream, 'P', partial);
                *partial = rest;
            }
        }
    }
}

/// Writes what is left of an unended line, at the end of a stream.
pub fn flush(log: &mut LogWriter, stream: &str, partial: &mut Vec<u8>) {
    if !partial.is_empty() {
        log.line(stream, 'F', partial);
        partial.clear();
    }
}

/// An open log file (or none: output is then dropped).
#[derive(Debug)]
pub struct LogWriter {
    file: Option<File>,
}

impl LogWriter {
    /// Opens `path` for appending, making its directory; an empty path logs nothing.
    pub fn open(path: &Path) -> Self {
        if path.as_os_str().is_empty() {
            return Self { file: None };
        }
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        Self {
            file: OpenOptions::new().create(true).append(true).open(path).ok(),
        }
    }

    /// Writes one record, stamped now.
    pub fn line(&mut self, stream: &str, tag: char, text: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut out = Vec::with_capacity(text.len() + 48);
        out.extend_from_slice(rfc3339_nano(now()).as_bytes());
        out.extend_from_slice(format!(" {stream} {tag} ").as_bytes());
        out.extend_from_slice(text);
        out.push(b'\n');
        let _ = file.write_all(&out);
    }
}

/// The wall clock as (seconds, nanoseconds) since the Unix epoch.
pub fn now() -> (i64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

/// UTC `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (days-to-civil after Howard Hinnant).
pub fn rfc3339_nano((secs, nanos): (i64, u32)) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_rfc3339_with_nanoseconds() {
        assert_eq!(rfc3339_nano((0, 5)), "1970-01-01T00:00:00.000000005Z");
        assert_eq!(
            rfc3339_nano((1_709_210_096, 123_000_000)),
            "2024-02-29T12:34:56.123000000Z"
        );
    }

    #[test]
    fn long_lines_are_cut_into_partial_records() {
        let dir = std::env::temp_dir().join(format!("crilog-test-{}", std::process::id()));
        let path = dir.join("0.log");
        let mut log = LogWriter::open(&path);
        let mut partial = Vec::new();
        let long = vec![b'x'; MAX_LINE + 10];
        emit(&mut log, "stdout", &mut partial, b"one\ntw");
        emit(&mut log, "stdout", &mut partial, &long);
        emit(&mut log, "stdout", &mut partial, b"\n");
        emit(&mut log, "stderr", &mut Vec::new(), b"three");
        let mut tail = b"end".to_vec();
        flush(&mut log, "stderr", &mut tail);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        let tags: Vec<(&str, &str, usize)> = text
            .lines()
            .map(|l| {
                let mut f = l.splitn(4, ' ');
                let _time = f.next();
                let stream = f.next().unwrap_or("");
                let tag = f.next().unwrap_or("");
                (stream, tag, f.next().unwrap_or("").len())
            })
            .collect();
        assert_eq!(
            tags,
            vec![
                ("stdout", "F", 3),
                ("stdout", "P", MAX_LINE),
                ("stdout", "F", 12),
                ("stderr", "F", 3)
            ]
        );
    }
}
