//! The Avro binary encoding's primitives, read with every bound checked: what
//! the datum scanner and the hand-written decoder share. Each is read exactly
//! as apache-avro 0.22 reads it, so that the two agree with apache-avro on
//! what a datum holds and on whether it is well-formed.

/// Why and where a datum was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WireError {
    pub offset: usize,
    pub reason: &'static str,
}

/// A position in a datum.
pub(super) struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Wire<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Wire { buf, pos: 0 }
    }

    /// The offset of the next byte.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// An error at the next byte.
    pub fn error(&self, reason: &'static str) -> WireError {
        self.error_at(self.pos, reason)
    }

    pub fn error_at(&self, offset: usize, reason: &'static str) -> WireError {
        WireError { offset, reason }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails unless the datum ends here.
    pub fn end(&self) -> Result<(), WireError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(self.error("trailing bytes after the datum"))
        }
    }

    pub fn byte(&mut self) -> Result<u8, WireError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.error("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(self.error("truncated"));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    /// A boolean: one byte, 0 or 1.
    pub fn boolean(&mut self) -> Result<bool, WireError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.error_at(self.pos - 1, "boolean byte is neither 0 nor 1")),
        }
    }

    /// A zig-zag varint, read like apache-avro reads it: at most 10 bytes,
    /// bits beyond 64 dropped.
    pub fn long(&mut self) -> Result<i64, WireError> {
        let mut z = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            z |= u64::from(b & 0x7f) << (i * 7);
            if b & 0x80 == 0 {
                let magnitude = (z >> 1) as i64;
                return Ok(if z & 1 == 0 { magnitude } else { !magnitude });
            }
        }
        Err(self.error("varint longer than 10 bytes"))
    }

    pub fn int(&mut self) -> Result<i32, WireError> {
        let at = self.pos;
        let v = self.long()?;
        i32::try_from(v).map_err(|_| self.error_at(at, "int out of range"))
    }

    /// A byte length: not negative, and at most the bytes left.
    pub fn len(&mut self) -> Result<usize, WireError> {
        let at = self.pos;
        let v = self.long()?;
        let n = usize::try_from(v).map_err(|_| self.error_at(at, "negative length"))?;
        if n > self.remaining() {
            return Err(self.error_at(at, "length exceeds the remaining bytes"));
        }
        Ok(n)
    }

    /// A union's branch index (a long), below `branches`.
    pub fn branch(&mut self, branches: usize) -> Result<usize, WireError> {
        let at = self.pos;
        let index = self.long()?;
        self.below(index, branches, at, "union branch out of range")
    }

    /// An enum's symbol index (an int), below `symbols`.
    pub fn symbol(&mut self, symbols: usize) -> Result<usize, WireError> {
        let at = self.pos;
        let index = self.int()?;
        self.below(i64::from(index), symbols, at, "enum index out of range")
    }

    /// `index` read at `at`, when it is below `count`.
    fn below(
        &self,
        index: i64,
        count: usize,
        at: usize,
        reason: &'static str,
    ) -> Result<usize, WireError> {
        usize::try_from(index)
            .ok()
            .filter(|i| *i < count)
            .ok_or_else(|| self.error_at(at, reason))
    }

    /// The item count of the next array or map block, `None` at the end. A
    /// negative count is followed by the block's byte size, as apache-avro
    /// reads it. A count must fit in the bytes left: every item of this
    /// contract takes at least one byte, so no input makes a reader reserve
    /// more than its own size.
    pub fn block(&mut self) -> Result<Option<usize>, WireError> {
        let at = self.pos;
        let count = self.long()?;
        if count == 0 {
            return Ok(None);
        }
        let count = if count < 0 {
            let size = self.long()?;
            if size < 0 {
                return Err(self.error("negative block size"));
            }
            count
                .checked_neg()
                .ok_or_else(|| self.error_at(at, "block count overflows"))?
        } else {
            count
        };
        match usize::try_from(count) {
            Ok(n) if n <= self.remaining() => Ok(Some(n)),
            _ => Err(self.error_at(at, "block count exceeds the remaining bytes")),
        }
    }
}
