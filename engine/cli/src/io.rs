//! Opening inputs and outputs (`-` or nothing means the standard streams).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

fn is_std(p: &Option<PathBuf>) -> bool {
    p.as_deref().is_none_or(|p| p == Path::new("-"))
}

/// An input and its size when known.
pub fn open_input(p: &Option<PathBuf>) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
    if is_std(p) {
        return Ok((Box::new(io::stdin()), None));
    }
    let path = p.as_deref().expect("not stdin");
    let f = File::open(path).with_context(|| format!("cannot open input {}", path.display()))?;
    let len = f.metadata().ok().map(|m| m.len());
    Ok((Box::new(f), len))
}

/// A writer whose errors name where it writes (`writing out.ndjson: No space left on
/// device`), keeping the error's kind (a closed pipe stays a broken pipe).
pub struct Named<W> {
    inner: W,
    name: String,
}

impl<W> Named<W> {
    /// `inner`, called `name` in errors.
    pub fn new(inner: W, name: impl Into<String>) -> Self {
        Self {
            inner,
            name: name.into(),
        }
    }

    fn wrap(&self, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("writing {}: {e}", self.name))
    }
}

impl<W: Write> Write for Named<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).map_err(|e| self.wrap(e))
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf).map_err(|e| self.wrap(e))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().map_err(|e| self.wrap(e))
    }
}

/// A buffered output; its write errors name the file (or standard output).
pub fn open_output(p: &Option<PathBuf>) -> Result<Box<dyn Write + Send>> {
    if is_std(p) {
        return Ok(Box::new(Named::new(
            BufWriter::with_capacity(1 << 16, io::stdout()),
            "standard output",
        )));
    }
    let path = p.as_deref().expect("not stdout");
    let f =
        File::create(path).with_context(|| format!("cannot create output {}", path.display()))?;
    Ok(Box::new(Named::new(
        BufWriter::with_capacity(1 << 16, f),
        path.display().to_string(),
    )))
}

/// Whether the output goes to a terminal.
pub fn output_is_terminal(p: &Option<PathBuf>) -> bool {
    use std::io::IsTerminal;
    is_std(p) && io::stdout().is_terminal()
}
