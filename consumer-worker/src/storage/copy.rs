//! Rows in Postgres's binary COPY format (`COPY … FROM STDIN (FORMAT binary)`), each value
//! encoded by sqlx's own binary encoder for its type — the bytes a bound parameter of that type
//! would carry.

use sqlx::encode::{Encode, IsNull};
use sqlx::postgres::{PgArgumentBuffer, Postgres};

/// The fixed start of a binary COPY stream: signature, flags (none), header extension (none).
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The stream's end: a row of -1 fields.
const TRAILER: [u8; 2] = (-1i16).to_be_bytes();

/// A binary COPY stream being written, row by row.
pub(crate) struct BinaryCopy {
    buf: PgArgumentBuffer,
    columns: i16,
    /// Fields written in the current row.
    written: i16,
}

impl BinaryCopy {
    /// A stream of rows of `columns` fields each.
    pub(crate) fn new(columns: i16) -> BinaryCopy {
        let mut buf = PgArgumentBuffer::default();
        buf.extend_from_slice(HEADER);
        BinaryCopy {
            buf,
            columns,
            written: columns,
        }
    }

    /// Starts a row; the previous one must be complete.
    pub(crate) fn row(&mut self) {
        debug_assert_eq!(self.written, self.columns, "a COPY row was left incomplete");
        self.buf.extend_from_slice(&self.columns.to_be_bytes());
        self.written = 0;
    }

    /// Writes the next field of the row: its length (-1 for NULL), then its bytes.
    pub(crate) fn field<'q, T: Encode<'q, Postgres>>(
        &mut self,
        value: &T,
    ) -> Result<(), sqlx::Error> {
        debug_assert!(
            self.written < self.columns,
            "more fields than columns in a COPY row"
        );
        self.written += 1;
        let at = self.buf.len();
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        if let IsNull::No = value
            .encode_by_ref(&mut self.buf)
            .map_err(sqlx::Error::Encode)?
        {
            let len = i32::try_from(self.buf.len() - at - 4)
                .map_err(|_| sqlx::Error::Encode("a value over 2 GiB".into()))?;
            self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        Ok(())
    }

    /// The whole stream, trailer included.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        debug_assert_eq!(self.written, self.columns, "a COPY row was left incomplete");
        self.buf.extend_from_slice(&TRAILER);
        std::mem::take(&mut *self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_framed_as_postgres_reads_them() {
        let mut copy = BinaryCopy::new(3);
        copy.row();
        copy.field(&"ab").unwrap();
        copy.field(&None::<&str>).unwrap();
        copy.field(&true).unwrap();
        let bytes = copy.finish();
        let mut expected = b"PGCOPY\n\xff\r\n\0".to_vec();
        expected.extend([0, 0, 0, 0, 0, 0, 0, 0]); // flags, header extension length
        expected.extend([0, 3]); // fields in the row
        expected.extend([0, 0, 0, 2, b'a', b'b']);
        expected.extend([0xff, 0xff, 0xff, 0xff]); // NULL
        expected.extend([0, 0, 0, 1, 1]);
        expected.extend([0xff, 0xff]); // trailer
        assert_eq!(bytes, expected);
    }

    #[test]
    fn an_empty_stream_is_header_and_trailer() {
        let bytes = BinaryCopy::new(2).finish();
        assert_eq!(bytes.len(), HEADER.len() + 2);
        assert!(bytes.ends_with(&[0xff, 0xff]));
    }

    #[test]
    #[should_panic(expected = "left incomplete")]
    fn a_short_row_is_a_bug() {
        let mut copy = BinaryCopy::new(2);
        copy.row();
        copy.field(&1i32).unwrap();
        copy.row();
    }
}
