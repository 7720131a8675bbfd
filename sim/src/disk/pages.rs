//! [`Pages`]: a simulated file's bytes as shared, copy-on-write pages.
//!
//! A simulated file has two copies of its bytes (what the page cache serves and what the platters
//! hold), and a sync, a crash and a durable file write copy one to the other. As flat vectors,
//! every sync copied its dirty pages, every growth of a redb file moved the whole file, and
//! every crash cloned every file: about a tenth of a simulated run. Here the copies share pages
//! (`Arc`s), so a sync or a crash copies pointers, growth adds pointers, and a page's bytes are
//! copied only when one side writes to a page the other still holds.

use std::ops::Range;
use std::sync::Arc;

use super::PAGE_BYTES;

/// Always `PAGE_BYTES` long.
type Page = Arc<[u8]>;

static ZERO_PAGE: [u8; PAGE_BYTES] = [0; PAGE_BYTES];

/// A file's bytes. Invariant: the bytes of the last page past `len` are zero, so a file that
/// grows reads zeros there, as a real one does.
#[derive(Clone, Debug, Default)]
pub(super) struct Pages {
    len: usize,
    /// `None`: a page of zeros that nobody wrote.
    pages: Vec<Option<Page>>,
}

impl Pages {
    pub(super) fn from_slice(data: &[u8]) -> Self {
        let mut p = Self::default();
        p.write(0, data);
        p
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn page(&self, index: usize) -> &[u8] {
        self.pages[index].as_deref().unwrap_or(&ZERO_PAGE)
    }

    /// Calls `f(page, offset in page, offset in range, length)` for each piece of `range`.
    fn pieces(range: Range<usize>, mut f: impl FnMut(usize, usize, usize, usize)) {
        let mut pos = range.start;
        while pos < range.end {
            let (page, at) = (pos / PAGE_BYTES, pos % PAGE_BYTES);
            let n = (PAGE_BYTES - at).min(range.end - pos);
            f(page, at, pos - range.start, n);
            pos += n;
        }
    }

    /// Copies the bytes at `offset` into `out`; the caller checked they lie within `len`.
    pub(super) fn read(&self, offset: usize, out: &mut [u8]) {
        debug_assert!(offset + out.len() <= self.len, "read past the end");
        Self::pieces(offset..offset + out.len(), |page, at, done, n| {
            out[done..done + n].copy_from_slice(&self.page(page)[at..at + n]);
        });
    }

    /// Writes `data` at `offset`, growing the file with zeros up to it first if it ends past `len`.
    pub(super) fn write(&mut self, offset: usize, data: &[u8]) {
        let end = offset + data.len();
        if end > self.len {
            self.set_len(end);
        }
        let pages = &mut self.pages;
        Self::pieces(offset..end, |page, at, done, n| {
            let slot = &mut pages[page];
            // A whole page over one that is shared (or never written) gets a fresh page rather
            // than a copy of bytes about to be overwritten.
            let overwrite_shared = n == PAGE_BYTES && slot.as_ref().is_some_and(|p| Arc::strong_count(p) > 1);
            match slot {
                Some(p) if !overwrite_shared => {
                    Arc::make_mut(p)[at..at + n].copy_from_slice(&data[done..done + n]);
                }
                // A whole page is copied once, straight from the data.
                _ if n == PAGE_BYTES => *slot = Some(Arc::from(&data[done..done + n])),
                _ => {
                    let mut fresh = vec![0; PAGE_BYTES];
                    fresh[at..at + n].copy_from_slice(&data[done..done + n]);
                    *slot = Some(Arc::from(fresh));
                }
            }
        });
    }

    /// Truncates or extends (with zeros) to `len`.
    pub(super) fn set_len(&mut self, len: usize) {
        if len < self.len {
            self.pages.truncate(len.div_ceil(PAGE_BYTES));
            let at = len % PAGE_BYTES;
            if at != 0 {
                if let Some(Some(last)) = self.pages.last_mut() {
                    Arc::make_mut(last)[at..].fill(0);
                }
            }
        } else {
            self.pages.resize(len.div_ceil(PAGE_BYTES), None);
        }
        self.len = len;
    }

    /// Makes page `index` (and the length) what `other` has, sharing its bytes.
    pub(super) fn take_page_of(&mut self, other: &Pages, index: usize) {
        if index < other.pages.len() {
            if index >= self.pages.len() {
                self.pages.resize(index + 1, None);
            }
            self.pages[index] = other.pages[index].clone();
        }
    }

    /// Makes the length what `other` has, keeping the bytes below it.
    pub(super) fn take_len_of(&mut self, other: &Pages) {
        self.set_len(other.len);
    }

    /// Whether `range` (within both files) holds the same bytes here and in `other`.
    pub(super) fn same_range(&self, other: &Pages, range: Range<usize>) -> bool {
        let mut same = true;
        Self::pieces(range, |page, at, _, n| {
            same &= self.page(page)[at..at + n] == other.page(page)[at..at + n];
        });
        same
    }

    /// Copies `range` (within both files) from `other`.
    pub(super) fn copy_range_from(&mut self, other: &Pages, range: Range<usize>) {
        let mut bytes = vec![0; range.len()];
        other.read(range.start, &mut bytes);
        self.write(range.start, &bytes);
    }

    pub(super) fn flip_bit(&mut self, offset: usize, bit: u8) {
        let mut byte = [0];
        self.read(offset, &mut byte);
        byte[0] ^= 1 << bit;
        self.write(offset, &byte);
    }

    pub(super) fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len];
        self.read(0, &mut v);
        v
    }

    /// Whether both hold the same bytes.
    pub(super) fn same_bytes(&self, other: &Pages) -> bool {
        self.len == other.len && self.same_range(other, 0..self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn reads_back_what_was_written_across_pages_and_zeros_elsewhere() {
        let mut p = Pages::default();
        let data = bytes(3 * PAGE_BYTES / 2, 7);
        p.write(PAGE_BYTES - 10, &data);
        assert_eq!(p.len(), PAGE_BYTES - 10 + data.len());
        let v = p.to_vec();
        assert!(v[..PAGE_BYTES - 10].iter().all(|b| *b == 0));
        assert_eq!(&v[PAGE_BYTES - 10..], &data[..]);
    }

    #[test]
    fn a_shrink_then_a_grow_reads_zeros_not_the_old_bytes() {
        let mut p = Pages::from_slice(&bytes(2 * PAGE_BYTES, 1));
        p.set_len(PAGE_BYTES + 5);
        p.set_len(2 * PAGE_BYTES + 100);
        let v = p.to_vec();
        assert_eq!(&v[..PAGE_BYTES + 5], &bytes(2 * PAGE_BYTES, 1)[..PAGE_BYTES + 5]);
        assert!(v[PAGE_BYTES + 5..].iter().all(|b| *b == 0));
    }

    #[test]
    fn copies_share_pages_until_one_side_writes() {
        let a = Pages::from_slice(&bytes(3 * PAGE_BYTES, 2));
        let mut b = a.clone();
        b.write(PAGE_BYTES + 1, &[0xff; 2]);
        b.write(2 * PAGE_BYTES, &[0xee; PAGE_BYTES]);
        assert_eq!(a.to_vec(), bytes(3 * PAGE_BYTES, 2), "the other copy changed");
        assert!(a.same_range(&b, 0..PAGE_BYTES));
        assert!(!a.same_range(&b, PAGE_BYTES..2 * PAGE_BYTES));
        assert!(Arc::ptr_eq(a.pages[0].as_ref().unwrap(), b.pages[0].as_ref().unwrap()));
        let mut c = a.clone();
        c.take_page_of(&b, 1);
        c.take_page_of(&b, 2);
        assert!(c.same_bytes(&b));
        c.flip_bit(3, 0);
        assert!(!c.same_bytes(&b));
        c.copy_range_from(&b, 0..8);
        assert!(c.same_bytes(&b));
    }
}
