//! Population statistics shared between engines that own different parts of the clients
//! (service instances that own different Kafka partitions): see `docs/POPULATION.md`.
//!
//! An engine that shares ([`FeatureEngine::share_population`](crate::FeatureEngine::share_population))
//! owns some parts (its *local* parts) and learns the others' contributions from [`Share`]s.
//! Each local part publishes, in epoch order, how far its contributions are final
//! (`through`: no request of an epoch at or before it will be counted any more) with its
//! contribution to the last epoch it had requests in. Before processing the first request of
//! epoch *e* an engine needs every part's `through` ≥ *e* − 1; it then merges every epoch
//! before *e* that any part contributed to, in epoch order, exactly as one engine with all
//! the parts would have.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::population::Delta;

const SHARE_MAGIC: &[u8; 8] = b"GWSHARE\0";
/// Version of the share format.
const SHARE_VERSION: u16 = 1;
/// Bytes before the body: magic, version, CRC-32 of the body.
const SHARE_HEADER: usize = 8 + 2 + 4;

/// What one part tells the engines that do not own it: its contributions are final through
/// epoch `through`, and what it contributed to one epoch at or before that (the last it had
/// requests in, sent once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Share {
    /// FNV-1a of the feature set's hash: shares of another feature set are refused.
    pub(crate) registry: u64,
    /// The number of parts of the engine that wrote it.
    pub(crate) parts: u32,
    pub(crate) part: u32,
    pub(crate) through: i64,
    /// The newest event time the writer had seen.
    pub(crate) max_ts: i64,
    pub(crate) delta: Option<(i64, Delta)>,
}

impl Share {
    /// The part it is about.
    pub fn part(&self) -> u32 {
        self.part
    }

    /// The epoch of the contribution it carries, if any.
    pub fn epoch(&self) -> Option<i64> {
        self.delta.as_ref().map(|(e, _)| *e)
    }

    /// The binary form: `GWSHARE\0`, version (u16 LE), CRC-32 of the body (u32 LE), then a
    /// postcard body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = postcard::to_stdvec(self).expect("a share serialises");
        let mut out = Vec::with_capacity(SHARE_HEADER + body.len());
        out.extend_from_slice(SHARE_MAGIC);
        out.extend_from_slice(&SHARE_VERSION.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads the binary form; refused, with what was wrong, when it is not a share, has
    /// another version, fails its checksum or does not decode.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let bad = |m: String| Err(Error::Share(m));
        if b.len() < SHARE_HEADER || &b[..8] != SHARE_MAGIC {
            return bad("not a gatewatch population share (bad magic)".into());
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != SHARE_VERSION {
            return bad(format!(
                "share format version {version} is not supported (this build reads \
                 {SHARE_VERSION})"
            ));
        }
        let body = &b[SHARE_HEADER..];
        let crc = u32::from_le_bytes(b[10..14].try_into().expect("4 bytes"));
        let actual = crc32fast::hash(body);
        if actual != crc {
            return bad(format!(
                "checksum mismatch (CRC-32 {actual:08x}, the header says {crc:08x})"
            ));
        }
        let share: Share =
            postcard::from_bytes(body).map_err(|e| Error::Share(format!("corrupt body: {e}")))?;
        if let Some((e, _)) = &share.delta
            && *e > share.through
        {
            return bad(format!(
                "contribution to epoch {e} after its final epoch {}",
                share.through
            ));
        }
        Ok(share)
    }
}

/// What a sharing engine knows of every part (saved with its state).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Exchange {
    /// FNV-1a of the feature set's hash (set when the engine is built or restored).
    #[serde(skip)]
    pub registry: u64,
    /// Per part: owned here.
    pub local: Vec<bool>,
    /// Per part: the last epoch whose contributions are final (`i64::MIN`: none).
    pub through: Vec<i64>,
    /// The local parts' `through` (they advance together).
    pub local_through: i64,
    /// Contributions not merged yet, by epoch.
    pub held: BTreeMap<i64, Vec<Delta>>,
    /// Shares the local parts wrote, not taken yet.
    pub outbox: Vec<Share>,
    /// The newest event time other parts reported.
    pub remote_ts: i64,
    /// Contributions dropped at their merge because they did not fit the statistics (they
    /// came from an engine with other statistics).
    #[serde(skip)]
    pub dropped: u64,
}

impl Exchange {
    /// Nothing known yet beyond epoch `through`; the parts in `local` owned here.
    pub fn new(registry: u64, local: Vec<bool>, through: i64) -> Self {
        Self {
            registry,
            through: vec![through; local.len()],
            local,
            local_through: through,
            held: BTreeMap::new(),
            outbox: Vec::new(),
            remote_ts: i64::MIN,
            dropped: 0,
        }
    }

    /// Whether every part's contributions are final through `epoch`.
    pub fn final_through(&self, epoch: i64) -> bool {
        self.through.iter().all(|t| *t >= epoch)
    }
}
