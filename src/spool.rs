//! Spool files: an upload written to disk as it arrives and read back, from the start, by any
//! number of readers, each of which may begin before the writer has finished. This is how the
//! gateway streams an upload through to the upstream while keeping memory flat and keeping the
//! whole file for a retry or a fallback.
//!
//! A [`SpoolWriter`] appends and publishes how far it has written; a [`Spool`] (cheap to clone)
//! reads what has been written and waits for more. A reader sees the end of the file once the
//! writer has called [`SpoolWriter::finish`]; if the writer fails or is dropped first, the
//! reader gets an error instead of a short file. The file is created readable by this user only
//! and removed when the writer and every `Spool` are gone.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// The largest piece a reader hands out at once.
const READ_CHUNK: u64 = 64 * 1024;

/// How far the writer has got.
#[derive(Clone, Debug, PartialEq)]
enum Progress {
    Writing(u64),
    Done(u64),
    Failed(String),
}

/// The file on disk, removed when the last handle goes.
struct SpoolPath(PathBuf);

impl Drop for SpoolPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The writing end of a spool file.
pub struct SpoolWriter {
    file: tokio::fs::File,
    written: u64,
    tx: watch::Sender<Progress>,
    _path: Arc<SpoolPath>,
}

/// A readable handle on a spool file (complete or still being written).
#[derive(Clone)]
pub struct Spool {
    path: Arc<SpoolPath>,
    rx: watch::Receiver<Progress>,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.path.0)
            .field("progress", &*self.rx.borrow())
            .finish()
    }
}

/// Creates a new, empty spool file in `dir` (named with `tag`), readable by this user only.
pub fn create(dir: &Path, tag: &str) -> io::Result<(SpoolWriter, Spool)> {
    let path = dir.join(format!("llmux-upload-{tag}"));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let file = tokio::fs::File::from_std(o.open(&path)?);
    let path = Arc::new(SpoolPath(path));
    let (tx, rx) = watch::channel(Progress::Writing(0));
    let writer = SpoolWriter {
        file,
        written: 0,
        tx,
        _path: Arc::clone(&path),
    };
    Ok((writer, Spool { path, rx }))
}

impl SpoolWriter {
    /// Appends `chunk`; readers may read it once this returns.
    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.file.write_all(chunk).await?;
        // tokio's file writes complete in the background: wait, so readers see the bytes.
        self.file.flush().await?;
        self.written += chunk.len() as u64;
        self.tx.send_replace(Progress::Writing(self.written));
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Marks the file complete: readers reach its end.
    pub fn finish(self) {
        self.tx.send_replace(Progress::Done(self.written));
    }

    /// Marks the file broken: readers get `reason` as an error.
    pub fn fail(self, reason: impl Into<String>) {
        self.tx.send_replace(Progress::Failed(reason.into()));
    }
}

impl Spool {
    /// The file's path (for messages; its content may still be arriving).
    pub fn path(&self) -> &Path {
        &self.path.0
    }

    /// The file's size once complete; `None` while it is still being written.
    pub fn complete_len(&self) -> Option<u64> {
        match &*self.rx.borrow() {
            Progress::Done(n) => Some(*n),
            Progress::Writing(_) | Progress::Failed(_) => None,
        }
    }

    /// The first `n` bytes (fewer if the file is shorter), waiting for them to arrive.
    pub async fn head(&self, n: usize) -> io::Result<Vec<u8>> {
        let have = available(&mut self.rx.clone(), n as u64).await?;
        let mut buf = vec![0u8; usize::try_from(have).unwrap_or(n).min(n)];
        let mut f = tokio::fs::File::open(self.path()).await?;
        f.read_exact(&mut buf).await?;
        Ok(buf)
    }

    /// The whole file from its start, as it arrives; ends when the writer has finished, fails
    /// if the writer failed or went away first.
    pub fn stream(&self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures_util::stream::try_unfold(
            (
                Arc::clone(&self.path),
                self.rx.clone(),
                None::<tokio::fs::File>,
                0u64,
            ),
            |(path, mut rx, mut file, offset)| async move {
                let have = available(&mut rx, offset + 1).await?;
                if have <= offset {
                    return Ok(None);
                }
                let f = match file.as_mut() {
                    Some(f) => f,
                    None => file.insert(tokio::fs::File::open(&path.0).await?),
                };
                let want = (have - offset).min(READ_CHUNK);
                let mut buf = vec![0u8; usize::try_from(want).unwrap_or(0)];
                let got = f.read(&mut buf).await?;
                if got == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the spooled upload is shorter than was written",
                    ));
                }
                buf.truncate(got);
                Ok(Some((
                    Bytes::from(buf),
                    (path, rx, file, offset + got as u64),
                )))
            },
        )
    }
}

/// What is known now: bytes readable, whether that is the whole file. A failed writer is an
/// error.
fn progress(rx: &watch::Receiver<Progress>) -> io::Result<(u64, bool)> {
    match &*rx.borrow() {
        Progress::Writing(n) => Ok((*n, false)),
        Progress::Done(n) => Ok((*n, true)),
        Progress::Failed(reason) => Err(io::Error::other(reason.clone())),
    }
}

/// Waits until at least `want` bytes are readable or the file is complete; the number of
/// readable bytes. A writer gone before finishing is an error.
async fn available(rx: &mut watch::Receiver<Progress>, want: u64) -> io::Result<u64> {
    loop {
        let (n, done) = progress(rx)?;
        if n >= want || done {
            return Ok(n);
        }
        if rx.changed().await.is_err() {
            // The writer is gone: what it last said stands, unless it never finished.
            let (n, done) = progress(rx)?;
            if done || n >= want {
                return Ok(n);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the upload ended before it was complete",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    fn dir() -> PathBuf {
        std::env::temp_dir()
    }

    async fn read_all(s: &Spool) -> io::Result<Vec<u8>> {
        s.stream()
            .try_fold(Vec::new(), |mut all, b| async move {
                all.extend_from_slice(&b);
                Ok(all)
            })
            .await
    }

    #[tokio::test]
    async fn a_reader_started_early_follows_the_writer_to_the_end() {
        let (mut w, spool) = create(&dir(), &format!("t1-{}", std::process::id())).unwrap();
        let reader = tokio::spawn({
            let s = spool.clone();
            async move { read_all(&s).await }
        });
        w.write(b"hello ").await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(spool.head(3).await.unwrap(), b"hel");
        assert_eq!(spool.complete_len(), None);
        w.write(b"world").await.unwrap();
        w.finish();
        assert_eq!(reader.await.unwrap().unwrap(), b"hello world".as_slice());
        assert_eq!(spool.complete_len(), Some(11));
        // A second reader after the fact reads the same bytes.
        assert_eq!(read_all(&spool).await.unwrap(), b"hello world".as_slice());
    }

    #[tokio::test]
    async fn a_failed_or_abandoned_writer_is_an_error_not_a_short_file() {
        let (mut w, spool) = create(&dir(), &format!("t2-{}", std::process::id())).unwrap();
        w.write(b"part").await.unwrap();
        w.fail("too large");
        let e = read_all(&spool).await.unwrap_err();
        assert_eq!(e.to_string(), "too large");

        let (mut w, spool) = create(&dir(), &format!("t3-{}", std::process::id())).unwrap();
        w.write(b"part").await.unwrap();
        drop(w);
        let e = read_all(&spool).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn the_file_is_private_and_removed_with_its_last_handle() {
        let (mut w, spool) = create(&dir(), &format!("t4-{}", std::process::id())).unwrap();
        let path = spool.path().to_owned();
        w.write(b"x").await.unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        w.finish();
        let other = spool.clone();
        drop(spool);
        assert!(path.exists());
        drop(other);
        assert!(!path.exists());
    }
}
