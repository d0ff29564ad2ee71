//! What a CUDA fat binary holds: the architectures of its machine code (`sm_90`) and of its PTX
//! (`compute_80`), read from its headers. `forge kernels` lists those of forge's kernels, so a build
//! shows which cards it starts on without compiling anything.

/// The fat binary's magic number, its first four bytes.
const MAGIC: u32 = 0xBA55_ED50;

/// Each entry's architecture, `sm_NN` for machine code and `compute_NN` for PTX, in file order; an
/// error names what in the headers is wrong.
pub fn architectures(fatbin: &[u8]) -> Result<Vec<String>, String> {
    let u16_at = |at: usize| fatbin.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at =
        |at: usize| fatbin.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let u64_at =
        |at: usize| fatbin.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    if u32_at(0) != Some(MAGIC) {
        return Err("not a CUDA fat binary (no magic number)".into());
    }
    let header = u16_at(6).ok_or("truncated header")? as usize;
    let end = header + u64_at(8).ok_or("truncated header")? as usize;
    let mut at = header;
    let mut found = Vec::new();
    while at < end {
        let truncated = || format!("entry at byte {at} is truncated");
        let kind = u16_at(at).ok_or_else(truncated)?;
        let entry_header = u32_at(at + 4).ok_or_else(truncated)? as usize;
        let payload = u64_at(at + 8).ok_or_else(truncated)? as usize;
        let arch = u32_at(at + 28).ok_or_else(truncated)?;
        found.push(match kind {
            1 => format!("compute_{arch}"),
            2 => format!("sm_{arch}"),
            other => return Err(format!("entry at byte {at} has unknown kind {other}")),
        });
        at += entry_header + payload;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fat binary laid out as nvcc writes them: a 16-byte header, then entries of a PTX (kind 1) and
    /// machine code (kind 2), each with its architecture at byte 28 of its header.
    #[test]
    fn reads_each_entrys_kind_and_architecture() {
        let entry = |kind: u16, arch: u32, payload: usize| -> Vec<u8> {
            let mut e = Vec::new();
            e.extend(kind.to_le_bytes());
            e.extend(257u16.to_le_bytes());
            e.extend(64u32.to_le_bytes());
            e.extend((payload as u64).to_le_bytes());
            e.resize(28, 0);
            e.extend(arch.to_le_bytes());
            e.resize(64 + payload, 0xAB);
            e
        };
        let body: Vec<u8> = [entry(1, 80, 40), entry(2, 90, 100), entry(2, 100, 8)].concat();
        let mut fatbin = Vec::new();
        fatbin.extend(MAGIC.to_le_bytes());
        fatbin.extend(1u16.to_le_bytes());
        fatbin.extend(16u16.to_le_bytes());
        fatbin.extend((body.len() as u64).to_le_bytes());
        fatbin.extend(&body);
        assert_eq!(architectures(&fatbin).unwrap(), ["compute_80", "sm_90", "sm_100"]);
        assert!(architectures(&fatbin[..40]).unwrap_err().contains("truncated"));
        assert!(architectures(b"\x7fELF").unwrap_err().contains("not a CUDA fat binary"));
    }
}
