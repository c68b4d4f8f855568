//! A few bytes summing up an entry's dependencies, kept with its stamp, so
//! the sweeper can tell that a live entry's current value no longer depends
//! on a dependency it is still registered under (its dependencies changed
//! from one fill to the next) and remove that registration.
//!
//! It is a Bloom filter: each dependency sets [`HASHES`] bits of 32 to 192
//! (16 bits per dependency), written as hex after the stamp's time (at most
//! 48 characters, so a stamps hash stays a listpack). A dependency of the
//! entry always tests present; one it does not have tests present with a
//! small probability (below 0.3 % up to 12 dependencies), and that
//! registration then just stays, as every registration did before. The hash
//! is fixed here (FNV-1a with a 64-bit finalizer), not taken from the
//! standard library, because the library writes fingerprints and the
//! daemon, another program perhaps of another version, tests them.
//!
//! ```
//! use smartcache_core::fingerprint::{fingerprint, may_contain, probe};
//! use smartcache_core::keys::TableName;
//! let t = TableName::parse("items").unwrap();
//! let fp = fingerprint(&[t.row_dep(&["1"]), t.table_dep()]);
//! assert_eq!(fp.len(), 8);
//! assert!(may_contain(&fp, probe(&t.row_dep(&["1"]))));
//! assert!(!may_contain(&fp, probe(&t.row_dep(&["2"]))));
//! ```

use crate::keys::DepId;

/// Bits each dependency sets.
///
/// ```
/// assert_eq!(smartcache_core::fingerprint::HASHES, 4);
/// ```
pub const HASHES: u64 = 4;
const BITS_PER_DEP: usize = 16;
const MIN_BITS: usize = 32;
const MAX_BITS: usize = 192;

/// Where a dependency's bits are: a 64-bit hash of its id whose four
/// 16-bit parts, highest first, give its bits modulo the size of a filter
/// (the script computes them for the filter it finds). Independent parts
/// rather than double hashing, which in 32 bits lets one dependency in 256
/// match another's bits.
///
/// ```
/// use smartcache_core::keys::DepId;
/// let a = smartcache_core::fingerprint::probe(&DepId::from_raw("t:public.t"));
/// assert_ne!(a, smartcache_core::fingerprint::probe(&DepId::from_raw("t:public.u")));
/// ```
pub fn probe(dep: &DepId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dep.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV's low bits alone mix poorly.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The probe as `fence.lua` takes it: 16 hex digits.
///
/// ```
/// assert_eq!(smartcache_core::fingerprint::probe_hex(0xab), "00000000000000ab");
/// ```
pub fn probe_hex(probe: u64) -> String {
    format!("{probe:016x}")
}

fn positions(probe: u64, bits: usize) -> impl Iterator<Item = usize> {
    (0..HASHES).map(move |i| ((probe >> (48 - 16 * i)) & 0xffff) as usize % bits)
}

/// The fingerprint of an entry depending on `deps`: hex digits, digit `d`
/// holding bits `4d` to `4d + 3` (lowest first).
///
/// ```
/// assert_eq!(smartcache_core::fingerprint::fingerprint(&[]), "00000000");
/// ```
pub fn fingerprint(deps: &[DepId]) -> String {
    let bits = (deps.len() * BITS_PER_DEP)
        .div_ceil(32)
        .saturating_mul(32)
        .clamp(MIN_BITS, MAX_BITS);
    let mut digits = vec![0u8; bits / 4];
    for dep in deps {
        for p in positions(probe(dep), bits) {
            digits[p / 4] |= 1 << (p % 4);
        }
    }
    digits
        .iter()
        .map(|d| char::from_digit(u32::from(*d), 16).expect("below 16"))
        .collect()
}

/// Whether a dependency with `probe` may be in the fingerprint `fp` (what
/// `fence.lua` computes); `true` for anything that is not a fingerprint.
///
/// ```
/// use smartcache_core::fingerprint::{may_contain, probe};
/// use smartcache_core::keys::DepId;
/// assert!(may_contain("junk", probe(&DepId::from_raw("t:public.t"))));
/// ```
pub fn may_contain(fp: &str, probe: u64) -> bool {
    let digits: Option<Vec<u32>> = fp.chars().map(|c| c.to_digit(16)).collect();
    let Some(digits) = digits.filter(|d| !d.is_empty()) else {
        return true;
    };
    positions(probe, digits.len() * 4).all(|p| digits[p / 4] >> (p % 4) & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::TableName;

    fn rows(from: usize, n: usize) -> Vec<DepId> {
        let t = TableName::parse("items").unwrap();
        (from..from + n)
            .map(|i| t.row_dep(&[i.to_string()]))
            .collect()
    }

    #[test]
    fn every_dependency_of_the_entry_tests_present() {
        for n in [0, 1, 2, 3, 5, 12, 13, 50, 400] {
            let deps = rows(0, n);
            let fp = fingerprint(&deps);
            assert!(fp.len() <= 48, "{n}: {fp}");
            assert!(deps.iter().all(|d| may_contain(&fp, probe(d))), "{n}");
        }
    }

    #[test]
    fn other_dependencies_rarely_test_present() {
        for (n, most) in [(1, 0.002), (3, 0.005), (12, 0.005)] {
            let fp = fingerprint(&rows(0, n));
            let others = rows(1_000_000, 100_000);
            let present = others.iter().filter(|d| may_contain(&fp, probe(d))).count();
            let rate = present as f64 / others.len() as f64;
            assert!(rate <= most, "{n} deps: {rate}");
        }
    }

    #[test]
    fn the_hash_does_not_move() {
        // Fingerprints written by one version are tested by another.
        assert_eq!(
            fingerprint(&[TableName::parse("items").unwrap().row_dep(&["1"])]),
            fingerprint(&[DepId::from_raw("r:public.items:1")])
        );
        assert_eq!(probe(&DepId::from_raw("t:public.t")), PROBE_T);
    }

    const PROBE_T: u64 = 0x6263_2013_26ee_3f12;
}
