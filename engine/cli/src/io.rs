//! Opening inputs and outputs (`-` or nothing means the standard streams).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

fn is_std(p: &Option<PathBuf>) -> bool {
    p.as_deref().is_none_or(|p| p == Path::new("-"))
}

/// An input and its size when known.
pub fn open_input(p: &Option<PathBuf>) -> Result<(Box<dyn Read>, Option<u64>)> {
    if is_std(p) {
        return Ok((Box::new(io::stdin().lock()), None));
    }
    let path = p.as_deref().expect("not stdin");
    let f = File::open(path).with_context(|| format!("cannot open input {}", path.display()))?;
    let len = f.metadata().ok().map(|m| m.len());
    Ok((Box::new(f), len))
}

/// A buffered output.
pub fn open_output(p: &Option<PathBuf>) -> Result<Box<dyn Write>> {
    if is_std(p) {
        return Ok(Box::new(BufWriter::with_capacity(
            1 << 16,
            io::stdout().lock(),
        )));
    }
    let path = p.as_deref().expect("not stdout");
    let f =
        File::create(path).with_context(|| format!("cannot create output {}", path.display()))?;
    Ok(Box::new(BufWriter::with_capacity(1 << 16, f)))
}

/// Whether the output goes to a terminal.
pub fn output_is_terminal(p: &Option<PathBuf>) -> bool {
    use std::io::IsTerminal;
    is_std(p) && io::stdout().is_terminal()
}
