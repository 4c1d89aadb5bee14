//! Guest-physical memory: sparse RAM pages, the case's MMIO buffers, and the trace of MMIO accesses.

use crate::layout::Layout;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Bytes per page.
pub const PAGE: u64 = 0x1000;

/// A multiplicative hasher for page numbers (the default SipHash costs more than the rest of a load);
/// the generator also keys its code-name table with it.
#[derive(Default)]
pub struct PageHasher(u64);

impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// One RAM page and whether decoded code or page tables depend on it.
pub struct Page {
    /// The bytes.
    pub data: Box<[u8; PAGE as usize]>,
    /// Set when an instruction was decoded from this page: a write here flushes the decode cache.
    pub watched: bool,
}

/// Physical memory: RAM pages allocated on first write, MMIO regions with their buffers.
pub struct PhysMem {
    pages: HashMap<u64, Page, BuildHasherDefault<PageHasher>>,
    /// The layout (RAM size, holes).
    pub layout: Layout,
    /// MMIO regions `(addr, buffer)`.
    pub mmio: Vec<(u64, Vec<u8>)>,
}

/// What a physical access touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Touch {
    /// RAM; `watched` says whether a write hit a watched page.
    Ram {
        /// A write hit code or page tables.
        watched: bool,
    },
    /// MMIO (the caller records the trace event).
    Mmio,
}

impl PhysMem {
    /// Empty RAM for `layout` with the given MMIO buffers.
    pub fn new(layout: Layout, mmio: Vec<(u64, Vec<u8>)>) -> PhysMem {
        PhysMem {
            pages: HashMap::default(),
            layout,
            mmio,
        }
    }

    /// Whether `pa` is RAM (a memslot) rather than MMIO.
    #[inline]
    pub fn is_ram(&self, pa: u64) -> bool {
        pa < self.layout.ram_size && (self.layout.holes.is_empty() || self.layout.is_ram(pa))
    }

    /// Copies `bytes` into RAM at `pa` (loading the image; no trace, holes skipped).
    pub fn load(&mut self, pa: u64, bytes: &[u8]) {
        // Page by page: RAM and MMIO holes are page-granular, so a page is all one or the other.
        let mut done = 0usize;
        while done < bytes.len() {
            let a = pa + done as u64;
            let off = (a % PAGE) as usize;
            let n = (PAGE as usize - off).min(bytes.len() - done);
            if self.is_ram(a) {
                self.page_mut(a).data[off..off + n].copy_from_slice(&bytes[done..done + n]);
            }
            done += n;
        }
    }

    fn page_mut(&mut self, pa: u64) -> &mut Page {
        self.pages.entry(pa / PAGE).or_insert_with(|| Page {
            data: Box::new([0; PAGE as usize]),
            watched: false,
        })
    }

    /// Marks the RAM page holding `pa` as watched.
    pub fn watch(&mut self, pa: u64) {
        if self.is_ram(pa) {
            self.page_mut(pa).watched = true;
        }
    }

    /// Reads `size` (≤ 8) bytes at `pa`, all inside one page; MMIO reads come from the buffers.
    #[inline]
    pub fn read(&self, pa: u64, size: u32) -> (u64, Touch) {
        if self.is_ram(pa) {
            let mut v = [0u8; 8];
            if let Some(p) = self.pages.get(&(pa / PAGE)) {
                let o = (pa % PAGE) as usize;
                v[..size as usize].copy_from_slice(&p.data[o..o + size as usize]);
            }
            (u64::from_le_bytes(v), Touch::Ram { watched: false })
        } else {
            let mut v = [0xffu8; 8];
            for (i, b) in v.iter_mut().enumerate().take(size as usize) {
                if let Some(x) = self.mmio_byte(pa + i as u64) {
                    *b = x;
                }
            }
            let m = if size >= 8 {
                u64::MAX
            } else {
                (1 << (8 * size)) - 1
            };
            (u64::from_le_bytes(v) & m, Touch::Mmio)
        }
    }

    /// Fills `out` from RAM at `pa` (one page at most; untouched pages read as zeros); no trace.
    #[inline]
    pub fn read_ram(&self, pa: u64, out: &mut [u8]) {
        let o = (pa % PAGE) as usize;
        match self.pages.get(&(pa / PAGE)) {
            Some(p) => out.copy_from_slice(&p.data[o..o + out.len()]),
            None => out.fill(0),
        }
    }

    /// Writes `size` (≤ 8) bytes at `pa`, all inside one page; MMIO writes land in the buffers.
    #[inline]
    pub fn write(&mut self, pa: u64, size: u32, val: u64) -> Touch {
        let bytes = val.to_le_bytes();
        if self.is_ram(pa) {
            let p = self.page_mut(pa);
            let o = (pa % PAGE) as usize;
            p.data[o..o + size as usize].copy_from_slice(&bytes[..size as usize]);
            Touch::Ram { watched: p.watched }
        } else {
            for (i, &b) in bytes.iter().enumerate().take(size as usize) {
                let a = pa + i as u64;
                if let Some((base, buf)) = self
                    .mmio
                    .iter_mut()
                    .find(|(s, buf)| a >= *s && a < *s + buf.len() as u64)
                {
                    buf[(a - *base) as usize] = b;
                }
            }
            Touch::Mmio
        }
    }

    fn mmio_byte(&self, a: u64) -> Option<u8> {
        self.mmio
            .iter()
            .find(|(s, buf)| a >= *s && a < *s + buf.len() as u64)
            .map(|(s, buf)| buf[(a - s) as usize])
    }

    /// `len` bytes from `pa` as the harness dumps them (see [`PhysMem::peek`]), a page at a time.
    pub fn dump(&self, pa: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize);
        let mut a = pa;
        let end = pa.wrapping_add(len);
        while out.len() < len as usize {
            let off = (a % PAGE) as usize;
            let n = ((PAGE as usize) - off).min(end.wrapping_sub(a) as usize);
            if self.is_ram(a) {
                match self.pages.get(&(a / PAGE)) {
                    Some(p) => out.extend_from_slice(&p.data[off..off + n]),
                    None => out.resize(out.len() + n, 0),
                }
            } else {
                self.dump_mmio(a, n, &mut out);
            }
            a = a.wrapping_add(n as u64);
        }
        out
    }

    /// Appends `n` bytes from `pa` on a page that is not RAM, as [`PhysMem::peek`] reads each:
    /// runs of an MMIO buffer copied at once, 0xff where no region lies.
    fn dump_mmio(&self, pa: u64, n: usize, out: &mut Vec<u8>) {
        let mut k = 0;
        while k < n {
            let x = pa.wrapping_add(k as u64);
            match self
                .mmio
                .iter()
                .find(|(s, buf)| x >= *s && x < *s + buf.len() as u64)
            {
                Some((s, buf)) => {
                    let o = (x - s) as usize;
                    // Up to the region's end, or to where another region starts (peek takes the
                    // first region in the list that holds a byte).
                    let next = self
                        .mmio
                        .iter()
                        .filter(|(t, _)| *t > x)
                        .map(|(t, _)| t - x)
                        .min()
                        .unwrap_or(u64::MAX);
                    let m = (buf.len() - o).min(n - k).min(next as usize);
                    out.extend_from_slice(&buf[o..o + m]);
                    k += m;
                }
                None => {
                    out.push(0xff);
                    k += 1;
                }
            }
        }
    }

    /// One byte as the harness reads it for a dump: RAM, MMIO buffer, or 0xff; no trace.
    pub fn peek(&self, pa: u64) -> u8 {
        if self.is_ram(pa) {
            self.pages
                .get(&(pa / PAGE))
                .map_or(0, |p| p.data[(pa % PAGE) as usize])
        } else {
            self.mmio_byte(pa).unwrap_or(0xff)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{Case, MmioRegion, Mode};

    #[test]
    fn ram_is_sparse_and_mmio_reads_buffer_or_all_ones() {
        let mut case = Case::new("t", Mode::Prot32, 0x1000, vec![0xf4]);
        case.mmio.push(MmioRegion {
            addr: 0x20_0000.into(),
            len: 4.into(),
            hex: crate::num::HexBytes(vec![1, 2, 3, 4]),
        });
        let l = Layout::for_case(&case);
        let mut m = PhysMem::new(l, vec![(0x20_0000, vec![1, 2, 3, 4])]);
        assert_eq!(m.read(0x5000, 4).0, 0);
        m.write(0x5000, 2, 0xbeef);
        assert_eq!(m.read(0x5000, 4).0, 0xbeef);
        assert_eq!(m.read(0x20_0002, 4), (0xffff_0403, Touch::Mmio));
        m.write(0x20_0000, 1, 0x55);
        assert_eq!(m.peek(0x20_0000), 0x55);
        assert_eq!(m.peek(0x20_0010), 0xff);
    }

    #[test]
    fn dump_equals_bytewise_peek_across_pages_holes_and_mmio() {
        let case = Case::new("t", Mode::Prot32, 0x1000, vec![0xf4]);
        let l = Layout::for_case(&case);
        let ram = l.ram_size;
        let mut m = PhysMem::new(
            l,
            vec![
                (ram + 0x10, vec![7, 8, 9]),
                (ram + 0x13, vec![10; 0x1800]),
                (ram + 0x3000, (0..=255).collect()),
            ],
        );
        for (i, a) in [0x0ffe_u64, 0x1000, 0x2fff, 0x5555, ram - 2]
            .into_iter()
            .enumerate()
        {
            m.write(a, 1, 0x40 + i as u64);
        }
        for (pa, len) in [
            (0x0ff0_u64, 0x2020_u64),
            (0x5555, 1),
            (ram - 4, 0x20),
            (ram + 0x11, 0x1000),
            (ram + 0x1000, 0x2400),
            (ram + 0x2fff, 0x102),
            (0, 0),
        ] {
            let want: Vec<u8> = (0..len).map(|i| m.peek(pa + i)).collect();
            assert_eq!(m.dump(pa, len), want, "dump({pa:#x}, {len:#x})");
        }
    }
}
