//! The file formats of request logs and of output records: one enum for every path.

use std::path::Path;

/// A file format: how a request log is read, or how records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum FileFormat {
    /// One JSON object per line.
    Ndjson,
    /// nginx / Apache combined access-log lines (input only).
    Combined,
    /// Apache Parquet, the event schema's (or the records') columns.
    Parquet,
    /// Comma-separated values with a header line.
    Csv,
}

impl FileFormat {
    /// Every format.
    pub const ALL: [Self; 4] = [Self::Ndjson, Self::Combined, Self::Parquet, Self::Csv];

    /// The format a file name's extension says (`.parquet`/`.pq`, `.csv`,
    /// `.ndjson`/`.jsonl`/`.json`), if any.
    pub fn from_extension(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" | "pq" => Some(Self::Parquet),
            "csv" => Some(Self::Csv),
            "ndjson" | "jsonl" | "json" => Some(Self::Ndjson),
            _ => None,
        }
    }

    /// The table format a file name's extension says (Parquet or CSV), if any.
    pub fn table_from_extension(path: &Path) -> Option<Self> {
        Self::from_extension(path).filter(|f| f.is_table())
    }

    /// Its name (`ndjson`, `combined`, `parquet`, `csv`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Ndjson => "ndjson",
            Self::Combined => "combined",
            Self::Parquet => "parquet",
            Self::Csv => "csv",
        }
    }

    /// Whether it is a table (Parquet, CSV): read whole with the event schema's columns,
    /// written in batches of rows.
    pub fn is_table(self) -> bool {
        matches!(self, Self::Parquet | Self::Csv)
    }

    /// Whether it is read line by line (NDJSON, access logs).
    pub fn is_lines(self) -> bool {
        matches!(self, Self::Ndjson | Self::Combined)
    }
}

impl std::fmt::Display for FileFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FileFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown format {s:?} (known: ndjson, combined, parquet, csv)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_extensions_and_kinds() {
        for f in FileFormat::ALL {
            assert_eq!(f.name().parse::<FileFormat>(), Ok(f));
            assert_ne!(f.is_table(), f.is_lines());
        }
        assert!("xml".parse::<FileFormat>().unwrap_err().contains("known"));
        let ext = |p: &str| FileFormat::from_extension(Path::new(p));
        assert_eq!(ext("a/b.PQ"), Some(FileFormat::Parquet));
        assert_eq!(ext("x.jsonl"), Some(FileFormat::Ndjson));
        assert_eq!(ext("x.log"), None);
        assert_eq!(
            FileFormat::table_from_extension(Path::new("x.ndjson")),
            None
        );
        assert_eq!(
            FileFormat::table_from_extension(Path::new("x.csv")),
            Some(FileFormat::Csv)
        );
    }
}
