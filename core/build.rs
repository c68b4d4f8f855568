//! Writes the hash tag of every Redis Cluster slot: the smallest decimal
//! number whose CRC16 (XMODEM) modulo 16384 is that slot. Computing the
//! table at run time took longer than a request's Redis timeout in debug
//! builds; `keys.rs` checks every tag against the `redis` crate's slots.

use std::fmt::Write;

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn main() {
    const SLOTS: usize = 16384;
    let mut tags = vec![None; SLOTS];
    let mut left = SLOTS;
    let mut n: u64 = 0;
    while left > 0 {
        let s = n.to_string();
        let slot = usize::from(crc16(s.as_bytes())) % SLOTS;
        if tags[slot].is_none() {
            tags[slot] = Some(s);
            left -= 1;
        }
        n += 1;
    }
    let mut out = String::from("/// The hash tag of each slot, by slot number.\npub(crate) static SLOT_TAGS: [&str; 16384] = [\n");
    for tag in tags {
        writeln!(out, "    {:?},", tag.expect("every slot found")).unwrap();
    }
    out.push_str("];\n");
    let dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(format!("{dir}/slot_tags.rs"), out).expect("OUT_DIR is writable");
    println!("cargo::rerun-if-changed=build.rs");
}
