//! The page size from `/proc/self/auxv`: the kernel's auxiliary vector for the reading
//! process, pairs of native words (type, value); `AT_PAGESZ` is the page size the
//! kernel runs with. A small file any process may read about itself, unlike the
//! root-only slab files.

/// The auxiliary vector's page-size entry (`AT_PAGESZ` in <elf.h>).
const AT_PAGESZ: u64 = 6;
/// The end of the vector (`AT_NULL`).
const AT_NULL: u64 = 0;

/// The page size in a vector of native-endian words of `word` bytes (4 or 8), if it
/// names one that is a plausible page size (a power of two from 4 KiB to 1 MiB).
pub fn page_size(bytes: &[u8], word: usize) -> Option<u64> {
    if word != 4 && word != 8 {
        return None;
    }
    let read = |chunk: &[u8]| -> u64 {
        if word == 8 {
            u64::from_ne_bytes(chunk.try_into().expect("8 bytes"))
        } else {
            u64::from(u32::from_ne_bytes(chunk.try_into().expect("4 bytes")))
        }
    };
    let mut words = bytes.chunks_exact(word).map(read);
    while let (Some(kind), Some(value)) = (words.next(), words.next()) {
        match kind {
            AT_NULL => return None,
            AT_PAGESZ => {
                return (value.is_power_of_two() && (4096..=1 << 20).contains(&value))
                    .then_some(value);
            }
            _ => {}
        }
    }
    None
}

/// An auxiliary vector of native 64-bit words naming `page` as the page size, as a
/// fixture tree carries it.
pub fn encode(page: u64) -> Vec<u8> {
    [AT_PAGESZ, page, AT_NULL, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_page_size() {
        assert_eq!(page_size(&encode(4096), 8), Some(4096));
        assert_eq!(page_size(&encode(65536), 8), Some(65536));
        let words32: Vec<u8> = [33u32, 7, AT_PAGESZ as u32, 16384, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        assert_eq!(page_size(&words32, 4), Some(16384));
    }

    #[test]
    fn refuses_what_is_not_a_page_size() {
        assert_eq!(page_size(&encode(1000), 8), None, "not a power of two");
        assert_eq!(page_size(&encode(1 << 30), 8), None, "too large");
        assert_eq!(page_size(&[0u8; 5], 8), None, "truncated");
        assert_eq!(page_size(&[], 8), None);
        assert_eq!(page_size(&encode(4096), 3), None);
        // AT_NULL ends the vector before a later entry.
        let mut v = [AT_NULL, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect::<Vec<u8>>();
        v.extend(encode(4096));
        assert_eq!(page_size(&v, 8), None);
    }
}
