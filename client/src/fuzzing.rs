//! Entry points for the fuzz targets in `fuzz/` (not a stable API): every decoder of bytes
//! that come off the network, driven without I/O. Each must return errors for anything
//! malformed — never panic, hang or allocate more than the limits allow.

use arrow_buffer::Buffer;
use wal2arrow_schema::encode::write_schema_message;
use wal2arrow_schema::samples::every_kind;
use wal2arrow_schema::{Decoder, Lsn};

use crate::protocol::frame::{Frame, FrameReader};
use wal2arrow_wal2json::{JsonDecoder, Output};

/// The largest message the frame target accepts: small, so that the fuzzer explores
/// framing rather than allocation.
const MAX_MESSAGE: usize = 1 << 20;

/// Feeds `data` to a [`FrameReader`] in chunks whose sizes the first byte chooses, and decodes
/// every XLogData payload as wal2arrow messages.
pub fn frames(data: &[u8]) {
    let Some((&chunk, data)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut reader = FrameReader::new(MAX_MESSAGE);
    let mut decoder = Decoder::new();
    let mut decoded = Vec::new();
    for piece in data.chunks(chunk) {
        reader.push(piece);
        loop {
            match reader.try_frame() {
                Ok(Some(Frame::XLogData { payload, .. })) => {
                    let _ = decoder.decode_into(&payload, &mut decoded);
                    decoded.clear();
                }
                Ok(Some(Frame::Other(mut bytes))) => {
                    let _ = postgres_protocol::message::backend::Message::parse(&mut bytes);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// Decodes `data` as a sequence of wal2arrow payloads, each preceded by its length (`u16`,
/// little-endian): headers, Bundles, Schemas and Batches through one session's decoder.
pub fn wire(data: &[u8]) {
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let payload = Buffer::from_slice_ref(&rest[2..2 + len]);
        rest = &rest[2 + len..];
        let _ = decoder.decode_into(&payload, &mut out);
        out.clear();
    }
}

/// The Schema message of `wal2arrow_schema::samples::every_kind`, a table with a column of
/// every kind wal2arrow maps: the `batch` target's schema.
pub fn every_kind_schema() -> Vec<u8> {
    let mut out = Vec::new();
    write_schema_message(&mut out, &every_kind()).expect("a schema message");
    out
}

/// Decodes `data` as a Batch message of `schema` (a wal2arrow Schema message): its first byte
/// chooses the flags, the rest is the Arrow IPC part — so that the fuzzer reaches the record
/// batch decoder with a schema of every kind.
pub fn batch(schema: &[u8], data: &[u8]) {
    let mut decoder = Decoder::new();
    if decoder.decode(&Buffer::from_slice_ref(schema)).is_err() {
        return;
    }
    let relid = u32::from_le_bytes(schema[4..8].try_into().expect("a decoded schema"));
    let mut message = Vec::with_capacity(16 + data.len());
    let mut header = Vec::new();
    let flags = data.first().copied().unwrap_or(0) & 0x03;
    write_batch_header(&mut header, relid, flags);
    message.extend_from_slice(&header);
    message.extend_from_slice(data.get(1..).unwrap_or(&[]));
    let _ = decoder.decode(&Buffer::from_slice_ref(&message));
}

fn write_batch_header(out: &mut Vec<u8>, relid: u32, flags: u8) {
    out.extend_from_slice(&[b'R', 3, flags, 0]);
    out.extend_from_slice(&relid.to_le_bytes());
    out.extend_from_slice(&0x1_0000_0000u64.to_le_bytes());
}

/// Decodes `data` as wal2json (format 2) messages, one per line, with a catalog that knows
/// table `public.t` and its types; lookups for anything else are answered "not found".
pub fn wal2json(data: &[u8]) {
    let mut decoder = sample_json_decoder();
    let mut out: Vec<Output> = Vec::new();
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        for _ in 0..4 {
            match decoder.decode_at(line, Lsn(i as u64), &mut out) {
                Ok(Some(lookup)) => decoder.catalog.answer_unknown(&lookup),
                Ok(None) | Err(_) => break,
            }
        }
        out.clear();
    }
}

/// Snapshot rows: the input's first byte says where to cut the rest in two, and both pieces
/// go to a binary `COPY` decoder of `public.t (id int4, note text, amount numeric(12,2), at
/// timestamptz, tags int4[])`, one after the other; then each line of the rest goes to the
/// text decoder (backfills).
pub fn copy(data: &[u8]) {
    use wal2arrow_wal2json::copy::{BinaryCopy, CopyEncoder, sample_copy_table};
    let Some((&cut, rest)) = data.split_first() else { return };
    let table = sample_copy_table();
    let mut encoder = CopyEncoder::new(std::sync::Arc::clone(&table), Lsn(1));
    let mut state = BinaryCopy::default();
    let cut = usize::from(cut).min(rest.len());
    let _ = encoder
        .push_binary(&mut state, &rest[..cut])
        .and_then(|()| encoder.push_binary(&mut state, &rest[cut..]));
    let _ = encoder.finish_batch();
    let mut encoder = CopyEncoder::new(table, Lsn(1));
    for line in rest.split(|b| *b == b'\n') {
        let _ = encoder.push_row(line);
        if encoder.is_full() {
            let _ = encoder.finish_batch();
        }
    }
    let _ = encoder.finish_batch();
}

/// A wal2json decoder whose catalog knows `public.t (id int4, note text, amount
/// numeric(12,2), at timestamptz, tags int4[])`.
pub fn sample_json_decoder() -> JsonDecoder {
    wal2arrow_wal2json::sample_decoder()
}

#[cfg(test)]
mod tests {
    //! The committed seed corpus (`fuzz/corpus/<target>/`): every file runs through its target
    //! in the ordinary test suite, and `cargo test -p wal2arrow-client write_seed_corpus --
    //! --ignored` writes the seeds anew.
    use std::path::PathBuf;

    use wal2arrow_schema::samples::append_row;
    use wal2arrow_schema::wire::{self, Begin, Commit, Truncate};
    use wal2arrow_schema::{BatchEncoder, ChangeOp};

    use super::*;

    fn corpus(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
    }

    /// A transaction's messages, as the plugin writes them: Begin, Schema, Batches (with
    /// missing and unrepresentable values), a Truncate, a message, Commit.
    fn session_messages() -> Vec<Vec<u8>> {
        let desc = every_kind();
        let mut msgs = Vec::new();
        let mut m = Vec::new();
        wire::write_begin(
            &mut m,
            &Begin { xid: 7, final_lsn: Lsn(0x1_0000_0100), commit_time_us: 1 },
        )
        .unwrap();
        msgs.push(m);
        let mut m = Vec::new();
        write_schema_message(&mut m, &desc).unwrap();
        msgs.push(m);
        let mut enc = BatchEncoder::new(&desc);
        for rows in [1usize, 7] {
            for i in 0..rows {
                append_row(&mut enc, i, Lsn(0x1_0000_0000 + i as u64));
            }
            enc.mark_missing(1);
            enc.mark_unrepresentable(4);
            let mut m = Vec::new();
            enc.write_batch(&mut m).unwrap();
            msgs.push(m);
        }
        enc.start_row(ChangeOp::Delete, Lsn(0x1_0000_0050)).unwrap();
        for c in 0..desc.columns.len() {
            enc.column(c).append_null();
            enc.mark_missing(c);
        }
        let mut m = Vec::new();
        enc.write_batch(&mut m).unwrap();
        msgs.push(m);
        let mut m = Vec::new();
        wire::write_truncate(
            &mut m,
            &Truncate { cascade: true, restart_identity: false, relids: vec![16384] },
        )
        .unwrap();
        msgs.push(m);
        let mut m = Vec::new();
        wire::write_logical_message(&mut m, true, Lsn(0x1_0000_0060), b"app", b"hello").unwrap();
        msgs.push(m);
        let mut m = Vec::new();
        wire::write_commit(
            &mut m,
            &Commit {
                commit_lsn: Lsn(0x1_0000_0100),
                end_lsn: Lsn(0x1_0000_0130),
                commit_time_us: 1,
            },
        )
        .unwrap();
        msgs.push(m);
        msgs
    }

    /// The messages as one Bundle.
    fn bundle(msgs: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        wire::write_bundle_header(&mut out, msgs.len() as u32).unwrap();
        for m in msgs {
            wire::write_bundle_entry_header(&mut out, m.len() as u32).unwrap();
            out.extend_from_slice(m);
            out.resize(out.len().div_ceil(16) * 16, 0);
        }
        out
    }

    fn length_prefixed(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            out.extend_from_slice(&(p.len() as u16).to_le_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    /// Backend messages as a replication connection receives them: XLogData for each payload,
    /// keepalives between, and a CopyDone.
    fn replication_bytes(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            out.push(b'd');
            out.extend_from_slice(&((4 + 25 + p.len()) as u32).to_be_bytes());
            out.push(b'w');
            out.extend_from_slice(&(0x1_0000_0000u64 + i as u64).to_be_bytes());
            out.extend_from_slice(&(0x1_0000_0100u64).to_be_bytes());
            out.extend_from_slice(&0i64.to_be_bytes());
            out.extend_from_slice(p);
            out.push(b'd');
            out.extend_from_slice(&22u32.to_be_bytes());
            out.push(b'k');
            out.extend_from_slice(&0x1_0000_0100u64.to_be_bytes());
            out.extend_from_slice(&0i64.to_be_bytes());
            out.push(u8::from(i % 2 == 0));
        }
        out.extend_from_slice(&[b'c', 0, 0, 0, 4]);
        out
    }

    fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
        let msgs = session_messages();
        let bundled = bundle(&msgs);
        let mut out = vec![
            ("wire", "messages", length_prefixed(&msgs)),
            ("wire", "bundle", length_prefixed(std::slice::from_ref(&bundled))),
            ("frames", "messages", [&[64u8][..], &replication_bytes(&msgs)].concat()),
            ("frames", "bundle-bytewise", [&[1u8][..], &replication_bytes(&[bundled])].concat()),
        ];
        for (i, m) in msgs.iter().enumerate().filter(|(_, m)| m[0] == b'R') {
            let seed = [&[m[2]][..], &m[wire::IPC_OFFSET..]].concat();
            out.push(("batch", ["one-row", "seven-rows", "delete"][i - 2], seed));
        }
        let json = include_str!("fuzz_seed.jsonl");
        out.push(("wal2json", "transaction", json.as_bytes().to_vec()));
        out.push(("copy", "binary-rows", copy_seed()));
        out.push((
            "copy",
            "text-rows",
            b"\x001\tn\\tote\t12.50\t2024-01-01 00:00:00+00\t{1,NULL}\n2\t\\N\t\\N\t\\N\t\\N\n"
                .to_vec(),
        ));
        out
    }

    /// A binary `COPY` stream of two rows of `public.t`, cut after 40 bytes.
    fn copy_seed() -> Vec<u8> {
        let field = |v: &[u8]| Some(v.to_vec());
        let rows = [
            vec![
                field(&7i32.to_be_bytes()),
                field("héllo".as_bytes()),
                field(b"-12.50"),
                field(&86_400_000_000i64.to_be_bytes()),
                field(b"{1,NULL,3}"),
            ],
            vec![field(&8i32.to_be_bytes()), None, field(b"NaN"), None, field(b"{}")],
        ];
        [&[40u8][..], &wal2arrow_wal2json::copy::binary_stream(&rows)].concat()
    }

    #[test]
    #[ignore = "writes the seed corpus into fuzz/corpus"]
    fn write_seed_corpus() {
        for (target, name, bytes) in seeds() {
            let dir = corpus(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }

    #[test]
    fn the_seeds_decode_and_every_corpus_file_runs_through_its_target() {
        // The seeds are well-formed: the wire session decodes without error.
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        for m in session_messages() {
            decoder.decode_into(&Buffer::from_slice_ref(&m), &mut out).unwrap();
        }
        assert_eq!(out.len(), 8, "Begin, Schema, three Batches, Truncate, Message, Commit");
        let schema = every_kind_schema();
        for target in ["frames", "wire", "batch", "wal2json", "copy"] {
            let Ok(dir) = std::fs::read_dir(corpus(target)) else {
                panic!("no corpus for {target}: run write_seed_corpus")
            };
            let mut files = 0;
            for f in dir.flatten() {
                let data = std::fs::read(f.path()).unwrap();
                match target {
                    "frames" => frames(&data),
                    "wire" => wire(&data),
                    "batch" => batch(&schema, &data),
                    "copy" => copy(&data),
                    _ => wal2json(&data),
                }
                files += 1;
            }
            assert!(files > 0, "{target}");
        }
    }
}
