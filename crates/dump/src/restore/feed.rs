//! Blocking pumps that feed a restore client: zstd decoded in-process into a child's stdin or
//! into a staging file, and pg_dumpall SQL with the `CREATE ROLE` lines of existing roles
//! turned into comments. Each counts the bytes it wrote and stops when `abort` is raised.
//! `src` is the set's file as stored (`source::Source::open`: a file, or an object whose
//! checksum is checked at its end: each pump reads its source to the end). An encrypted file
//! (crate::crypt) is given already wrapped by `crypt::plain`: age, then zstd.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::globals::{Statement, Verdict, judge};
use super::source::drain;

const BUF: usize = 1 << 20;

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "stopped")
}

/// Decodes the zstd file `src` into `dst`. Returns the bytes written.
pub(crate) fn decode_into(
    src: impl Read,
    mut dst: impl Write,
    written: &AtomicU64,
    abort: &AtomicBool,
) -> io::Result<u64> {
    let mut dec = zstd::stream::read::Decoder::new(src)?;
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        if abort.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        total += n as u64;
        written.store(total, Ordering::Relaxed);
    }
    drain(dec.finish())?;
    dst.flush()?;
    Ok(total)
}

/// Decodes the zstd file `src` into a new private file `dst` (0600, must not exist).
pub(crate) fn decode_to_file(
    src: impl Read,
    dst: &Path,
    written: &AtomicU64,
    abort: &AtomicBool,
) -> io::Result<u64> {
    let f = crate::set::create_private_file(dst)?;
    decode_into(src, io::BufWriter::with_capacity(BUF, f), written, abort)
}

/// Decodes the zstd file `src` into `pipe` and into a new private file `dst` at once. A pipe
/// closed by its reader (pg_restore stops reading after the sections it restores) is no error:
/// the file is written to the end. Returns the bytes decoded.
pub(crate) fn decode_tee(
    src: impl Read,
    pipe: File,
    dst: &Path,
    written: &AtomicU64,
    abort: &AtomicBool,
) -> io::Result<u64> {
    let mut dec = zstd::stream::read::Decoder::new(src)?;
    let mut file = io::BufWriter::with_capacity(BUF, crate::set::create_private_file(dst)?);
    let mut pipe = Some(pipe);
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        if abort.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        file.write_all(&buf[..n])?;
        if let Some(p) = pipe.as_mut() {
            match p.write_all(&buf[..n]) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => pipe = None,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
        written.store(total, Ordering::Relaxed);
    }
    drop(pipe);
    drain(dec.finish())?;
    file.flush()?;
    Ok(total)
}

/// Decodes pg_dumpall SQL from `src` into `dst`. Before the first `\connect` (the roles part),
/// every statement that would change a role in `existing` becomes a comment, line for line
/// (see `globals`). Returns the bytes written and the roles whose CREATE was skipped.
pub(crate) fn decode_sql_into(
    src: impl Read,
    dst: impl Write,
    existing: &BTreeSet<String>,
    written: &AtomicU64,
    abort: &AtomicBool,
) -> io::Result<(u64, Vec<String>)> {
    let dec = zstd::stream::read::Decoder::new(src)?;
    let mut reader = BufReader::with_capacity(BUF, dec);
    let mut out = io::BufWriter::with_capacity(BUF, dst);
    let mut skipped = Vec::new();
    let mut globals = true;
    let mut stmt = Statement::default();
    let mut line = Vec::new();
    let mut total = 0u64;
    let mut since_check = 0usize;
    let mut emit = |out: &mut io::BufWriter<_>, bytes: &[u8]| -> io::Result<()> {
        out.write_all(bytes)?;
        total += bytes.len() as u64;
        written.store(total, Ordering::Relaxed);
        Ok(())
    };
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        since_check += 1;
        if since_check >= 4096 {
            since_check = 0;
            if abort.load(Ordering::Relaxed) {
                return Err(stopped());
            }
        }
        if globals {
            let trimmed = line.trim_ascii_start();
            if stmt.is_empty()
                && (trimmed.is_empty() || trimmed.starts_with(b"--") || trimmed.starts_with(b"\\"))
            {
                if line.starts_with(b"\\connect") {
                    globals = false;
                }
                emit(&mut out, &line)?;
                continue;
            }
            if stmt.push(&line) {
                let verdict = judge(&stmt.text(), existing);
                let skip = verdict != Verdict::Keep;
                if let Verdict::SkipCreate(name) = verdict {
                    skipped.push(name);
                }
                let bytes = stmt.take(skip);
                emit(&mut out, &bytes)?;
            }
            continue;
        }
        emit(&mut out, &line)?;
    }
    let rest = stmt.take(false);
    emit(&mut out, &rest)?;
    drain(reader.into_inner().finish())?;
    out.flush()?;
    Ok((total, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_filter_only_before_the_first_connect() {
        let dir = tempfile::tempdir().unwrap();
        let sql = "CREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER PASSWORD 'x';\nCREATE ROLE app;\nGRANT app TO postgres;\n\\connect template1\nCREATE ROLE postgres;\n";
        let src = dir.path().join("c.sql.zst");
        std::fs::write(&src, zstd::encode_all(sql.as_bytes(), 3).unwrap()).unwrap();
        let mut out = Vec::new();
        let existing: BTreeSet<String> = ["postgres".to_string()].into();
        let (n, skipped) = decode_sql_into(
            File::open(&src).unwrap(),
            &mut out,
            &existing,
            &AtomicU64::new(0),
            &AtomicBool::new(false),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(n as usize, text.len());
        assert_eq!(skipped, vec!["postgres"]);
        assert!(
            text.starts_with("-- CREATE ROLE postgres;\n-- ALTER ROLE postgres WITH SUPERUSER PASSWORD 'x';\nCREATE ROLE app;\nGRANT app TO postgres;\n"),
            "{text}"
        );
        assert!(text.ends_with("\\connect template1\nCREATE ROLE postgres;\n"));
    }

    #[test]
    fn decode_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let src = dir.path().join("d.zst");
        std::fs::write(&src, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let dst = dir.path().join("d");
        let w = AtomicU64::new(0);
        let n =
            decode_to_file(File::open(&src).unwrap(), &dst, &w, &AtomicBool::new(false)).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(w.load(Ordering::Relaxed), n);
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dst).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            decode_to_file(File::open(&src).unwrap(), &dst, &w, &AtomicBool::new(false)).is_err()
        );
        let mut sink = Vec::new();
        assert!(
            decode_into(
                File::open(&src).unwrap(),
                &mut sink,
                &w,
                &AtomicBool::new(true)
            )
            .is_err()
        );
    }
}
