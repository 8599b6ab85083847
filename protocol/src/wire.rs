//! Little-endian fixed-width fields: the one cursor every decoder in this crate reads with,
//! and the writer every encoder appends with.
//!
//! The reader never panics and never allocates: every read first checks that the bytes it
//! needs are there, and a length that would overflow `usize` counts as "not there".

/// A read ran past the end of the input: the field at byte offset `at` needs `needed`
/// bytes, and fewer remain. `needed` is `usize::MAX` when the size itself overflowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Short {
    pub needed: usize,
    pub at: usize,
}

/// A cursor over a byte slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// A cursor over `buf` that starts at `pos` (at most `buf.len()`), so that offsets in
    /// errors count from the start of `buf`.
    pub fn new_at(buf: &'a [u8], pos: usize) -> Reader<'a> {
        Reader {
            buf,
            pos: pos.min(buf.len()),
        }
    }

    /// The offset of the next byte to read.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Checks, without consuming anything, that `count` items of `size` bytes each remain,
    /// and returns their total size.
    pub fn ensure(&self, count: usize, size: usize) -> Result<usize, Short> {
        let needed = count.saturating_mul(size);
        if needed > self.remaining() {
            Err(Short {
                needed,
                at: self.pos,
            })
        } else {
            Ok(needed)
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        self.ensure(n, 1)?;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Short> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, Short> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn f32(&mut self) -> Result<f32, Short> {
        Ok(f32::from_le_bytes(self.array()?))
    }
}

/// Appends little-endian fields to a byte vector.
pub(crate) trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_f32(&mut self, v: f32);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_f32(&mut self, v: f32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_report_offset_and_size() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Ok(0x0201));
        assert_eq!(r.u32(), Err(Short { needed: 4, at: 2 }));
        assert_eq!(r.u8(), Ok(3));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn overflowing_sizes_count_as_missing() {
        let r = Reader::new(&[0; 8]);
        assert_eq!(
            r.ensure(usize::MAX, 4),
            Err(Short {
                needed: usize::MAX,
                at: 0
            })
        );
    }
}
