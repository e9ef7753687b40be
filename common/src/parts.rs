//! Records larger than the topic's record limit travel as parts, so a 1 GB value crosses any broker at its
//! defaults (Kafka refuses records over `max.message.bytes`, about 1 MiB unless raised).
//!
//! ```text
//!   value (n bytes > part size) ──split──▶ part 1/k ─ part 2/k ─ … ─ part k/k     same key, same partition,
//!                                          header pgm-part = "i/k", values concatenate to the whole
//!   consumer: Assembler per partition ──▶ the whole value once part k/k arrives (its offset is the record's)
//! ```
//!
//! A producer writes the parts of one value back to back into one partition (capture and transform are idempotent
//! producers: no reordering, no gaps). A consumer takes the record as consumed only at its last part, so a restart
//! reads it again from part 1; it commits no offset between parts. A log may still hold a torn sequence — parts
//! 1..j written, then the producer restarted and wrote the whole value again — and the [`Assembler`] drops the
//! torn prefix when a new part 1 (or a whole record) comes. Parts that never complete are never handed on, and
//! apply's per-partition counts then stop it on the missing record rather than guess.
//!
//! The record's metadata (its key) is the same on every part; what a part adds is the header and the slice.

/// The Kafka header naming a part: `"<index>/<count>"`, 1-based, ASCII.
pub const HEADER: &str = "pgm-part";

/// Room kept under `max.message.bytes` for the key, the header and Kafka's record and batch framing.
const FRAMING: usize = 4096;

/// The largest value a record carries whole under the topic's `max.message.bytes`; longer ones are split into
/// slices of this size.
pub fn part_size(max_message_bytes: i32) -> usize {
    (max_message_bytes.max(0) as usize).saturating_sub(FRAMING).max(FRAMING)
}

/// The slices of `value`: one when it fits (sent without the header), else `ceil(len / part_size)`.
pub fn split(value: &[u8], part_size: usize) -> impl Iterator<Item = &[u8]> {
    // chunks() of an empty slice yields nothing; an empty value is still one record.
    let empty = value.is_empty().then_some(value);
    empty.into_iter().chain(value.chunks(part_size.max(1)))
}

/// How many records [`split`] makes of `len` bytes.
pub fn count(len: usize, part_size: usize) -> usize {
    len.div_ceil(part_size.max(1)).max(1)
}

/// The header value of part `index` (1-based) of `count`.
pub fn header_value(index: usize, count: usize) -> String {
    format!("{index}/{count}")
}

/// The Kafka headers of slice `index` (0-based, as [`split`] yields them) of `count`: none for a record sent whole.
pub fn headers(index: usize, count: usize) -> Option<rdkafka::message::OwnedHeaders> {
    use rdkafka::message::{Header, OwnedHeaders};
    (count > 1).then(|| {
        let value = header_value(index + 1, count);
        OwnedHeaders::new().insert(Header { key: HEADER, value: Some(&value) })
    })
}

/// `(index, count)` from a header value; `None` when it is not a well-formed part header.
pub fn parse_header(value: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (index, count) = text.split_once('/')?;
    let (index, count) = (index.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
    (index >= 1 && index <= count && count >= 2).then_some((index, count))
}

/// What [`Assembler::push`] made of a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Assembled<'a> {
    /// A record that was not split: its value as it is.
    Whole(&'a [u8]),
    /// The last part of a split record: the whole value.
    Joined(Vec<u8>),
    /// A part before the last: more to come.
    Pending,
}

impl Assembled<'_> {
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Assembled::Whole(bytes) => Some(bytes),
            Assembled::Joined(bytes) => Some(bytes),
            Assembled::Pending => None,
        }
    }
}

/// Joins the parts of one partition's records, in offset order. One per consumed partition.
#[derive(Debug, Default)]
pub struct Assembler {
    key: Vec<u8>,
    count: u32,
    next: u32,
    buffer: Vec<u8>,
}

impl Assembler {
    /// Feeds the next record of the partition: its key, its `pgm-part` header (if any) and its value.
    pub fn push<'a>(&mut self, key: &[u8], part: Option<(u32, u32)>, value: &'a [u8]) -> Assembled<'a> {
        let Some((index, count)) = part else {
            // A whole record ends any torn sequence before it.
            self.reset();
            return Assembled::Whole(value);
        };
        let continues = index == self.next && count == self.count && key == self.key.as_slice();
        if index == 1 {
            self.reset();
            self.key.extend_from_slice(key);
            self.count = count;
            // Every part but the last is full: the whole fits in count × this part's size, allocated once (growing
            // by doubling would hold two copies of a huge value at once).
            self.buffer.reserve_exact(value.len().saturating_mul(count as usize));
        } else if !continues {
            // A part without its beginning: the tail of a torn sequence. Its whole value comes again from part 1.
            self.reset();
            return Assembled::Pending;
        }
        self.buffer.extend_from_slice(value);
        self.next = index + 1;
        if index < count {
            return Assembled::Pending;
        }
        let whole = std::mem::take(&mut self.buffer);
        self.reset();
        Assembled::Joined(whole)
    }

    /// Forgets a sequence in progress (its partition was revoked or re-read from an earlier offset).
    pub fn reset(&mut self) {
        self.key.clear();
        self.count = 0;
        self.next = 0;
        self.buffer = Vec::new();
    }

    /// No sequence in progress.
    pub fn is_idle(&self) -> bool {
        self.count == 0
    }

    /// The sequence in progress: its key, the parts received and how many it has.
    pub fn progress(&self) -> Option<(&[u8], u32, u32)> {
        (self.count > 0).then(|| (self.key.as_slice(), self.next.saturating_sub(1), self.count))
    }

    /// Bytes held for a sequence in progress.
    pub fn pending_bytes(&self) -> usize {
        self.buffer.len()
    }
}

/// The `pgm-part` header of a consumed record, if it has one.
pub fn of_message<M: rdkafka::message::Message>(message: &M) -> Option<(u32, u32)> {
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == HEADER).and_then(|h| h.value).and_then(parse_header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A record as the assembler sees it: its part header and its value.
    type Record = (Option<(u32, u32)>, Vec<u8>);

    fn parts(value: &[u8], size: usize) -> Vec<Record> {
        let n = count(value.len(), size);
        split(value, size)
            .enumerate()
            .map(|(i, slice)| ((n > 1).then_some(((i + 1) as u32, n as u32)), slice.to_vec()))
            .collect()
    }

    fn feed(assembler: &mut Assembler, key: &[u8], records: &[Record]) -> Vec<Vec<u8>> {
        records
            .iter()
            .filter_map(|(part, value)| assembler.push(key, *part, value).bytes().map(<[u8]>::to_vec))
            .collect()
    }

    #[test]
    fn headers_round_trip_and_bad_ones_are_not_parts() {
        assert_eq!(parse_header(header_value(3, 7).as_bytes()), Some((3, 7)));
        for bad in ["", "1", "0/2", "3/2", "1/1", "a/b", "1/2/3", "-1/2"] {
            assert_eq!(parse_header(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn a_small_value_is_one_record_without_a_header_and_an_empty_one_too() {
        assert_eq!(parts(b"abc", 10), vec![(None, b"abc".to_vec())]);
        assert_eq!(parts(b"", 10), vec![(None, Vec::new())]);
    }

    #[test]
    fn a_torn_sequence_is_dropped_and_the_repeat_joins() {
        let value: Vec<u8> = (0..100u8).collect();
        let all = parts(&value, 30);
        assert_eq!(all.len(), 4);
        let mut records = all[..2].to_vec(); // the producer died after two parts
        records.extend(all.iter().cloned()); // and wrote the whole value again
        records.push((None, b"next".to_vec()));
        let mut assembler = Assembler::default();
        assert_eq!(feed(&mut assembler, b"k", &records), vec![value.clone(), b"next".to_vec()]);
        // A tail without its first part (a resume inside a torn sequence) gives nothing.
        assert_eq!(feed(&mut assembler, b"k", &all[2..]), Vec::<Vec<u8>>::new());
        assert_eq!(assembler.pending_bytes(), 0);
    }

    proptest! {
        #[test]
        fn parts_join_to_the_value(value in proptest::collection::vec(any::<u8>(), 0..5000), size in 1usize..700) {
            let mut assembler = Assembler::default();
            let joined = feed(&mut assembler, b"key", &parts(&value, size));
            prop_assert_eq!(joined, vec![value]);
        }
    }
}
