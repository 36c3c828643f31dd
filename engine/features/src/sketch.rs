//! Hashes and the distinct-count sketch.

/// 64-bit FNV-1a: stable across versions and machines (used for bitmaps and the registry).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A 64-bit finaliser (splitmix64), to spread FNV's low bits before taking a bit position.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bitmap bit of a hash.
pub fn bit(h: u64) -> u64 {
    1u64 << (mix(h) >> 58)
}

/// Linear-counting estimate of the number of distinct items that set `bits` (m = 64):
/// `-m ln(zeros / m)`, and `m ln m` ≈ 266 when every bit is set.
pub fn linear_count(bits: u64) -> f64 {
    LINEAR_COUNT[bits.count_zeros() as usize]
}

/// `linear_count` by number of zero bits, computed once.
static LINEAR_COUNT: std::sync::LazyLock<[f64; 65]> = std::sync::LazyLock::new(|| {
    let mut t = [0.0; 65];
    for (zeros, v) in t.iter_mut().enumerate() {
        *v = if zeros == 0 {
            64.0 * 64f64.ln()
        } else {
            -64.0 * (zeros as f64 / 64.0).ln()
        };
    }
    t
});

/// Kafka's default partitioner hash (murmur2, seed 0x9747b28c), so that state parts line up
/// with Kafka partitions keyed by the client key.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len() as u32;
    let mut h: u32 = 0x9747_b28c ^ len;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The part (Kafka partition) that owns a key among `parts`: `(murmur2(key) & 0x7fffffff) % parts`.
pub fn part_of(key: &str, parts: u32) -> u32 {
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % parts.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Reference values from Kafka's `Utils.murmur2` test vectors.
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(
            murmur2(b"a-little-bit-longer-string") as i32,
            -1_486_304_829
        );
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58_897_971
        );
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }

    #[test]
    fn linear_counting_is_close() {
        // Mean relative error over many sets of n items stays within the documented bound.
        for n in [1usize, 5, 10, 30, 64] {
            let mut err = 0.0;
            let trials = 400;
            for t in 0..trials {
                let mut bits = 0u64;
                for i in 0..n {
                    bits |= bit(fnv1a(format!("{t}/{i}").as_bytes()));
                }
                err += (linear_count(bits) - n as f64).powi(2);
            }
            let rmse = (err / f64::from(trials)).sqrt() / n as f64;
            assert!(rmse < 0.13, "n={n}: relative RMSE {rmse}");
        }
        assert_eq!(linear_count(0), 0.0);
        assert!((linear_count(u64::MAX) - 266.17).abs() < 0.01);
    }
}
