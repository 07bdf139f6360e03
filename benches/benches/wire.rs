//! Micro-benchmarks of the pieces of the data path that look at every
//! byte pgherd relays: the streaming [`Scanner`] (every message header of
//! every reply and request) and [`next_frame`] (pgherd's own exchanges:
//! login, resets). Run with `cargo bench -p pgherd-bench --bench wire`.
//!
//! These are for comparing changes to `pgherd-wire`; the end-to-end cost
//! per transaction is `pgherd-bench` (against pgbouncer) and
//! `benches/callgrind.sh` (instructions per transaction).

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pgherd_wire::backend;
use pgherd_wire::frame::put_message;
use pgherd_wire::{next_frame, Chunk, Scanner};

/// What pgbench -S gets back for one transaction: RowDescription, one
/// DataRow, CommandComplete, ReadyForQuery.
fn select_reply() -> BytesMut {
    let mut out = BytesMut::new();
    put_message(
        &mut out,
        backend::ROW_DESCRIPTION,
        &[b"\x00\x01abalance\x00\x00\x00\x40\x00\x00\x03\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"],
    );
    put_message(
        &mut out,
        backend::DATA_ROW,
        &[b"\x00\x01\x00\x00\x00\x04-123"],
    );
    put_message(&mut out, backend::COMMAND_COMPLETE, &[b"SELECT 1\x00"]);
    put_message(&mut out, backend::READY_FOR_QUERY, &[b"I"]);
    out
}

/// A 16 KiB read of a large result: DataRows of 105 bytes each.
fn result_rows() -> BytesMut {
    let mut out = BytesMut::new();
    let row = [b'x'; 94];
    while out.len() < 16 * 1024 {
        put_message(
            &mut out,
            backend::DATA_ROW,
            &[b"\x00\x01\x00\x00\x00\x5e", &row],
        );
    }
    out
}

/// Scans `buf` as the relay does, watching only ReadyForQuery; returns the
/// number of messages started.
fn scan_all(buf: &[u8]) -> usize {
    let mut scanner = Scanner::new(1 << 30);
    let mut at = 0;
    let mut messages = 0;
    loop {
        match scanner.next(&buf[at..], |tag| tag == backend::READY_FOR_QUERY) {
            Ok(Chunk::Opaque { len, starts }) => {
                messages += usize::from(starts.is_some());
                at += len;
            }
            Ok(Chunk::Message { len, .. }) => {
                messages += 1;
                at += len;
            }
            Ok(Chunk::NeedMore) | Err(_) => return messages,
        }
    }
}

fn scanner(c: &mut Criterion) {
    let mut group = c.benchmark_group("scanner");
    let reply = select_reply();
    let rows = result_rows();
    // What is measured is a whole scan, not an early stop.
    assert_eq!(scan_all(&reply), 4);
    assert_eq!(scan_all(&rows), rows.len() / 105, "105-byte DataRows");
    group.throughput(Throughput::Bytes(reply.len() as u64));
    group.bench_function("select_reply", |b| {
        b.iter(|| scan_all(std::hint::black_box(&reply)))
    });
    group.throughput(Throughput::Bytes(rows.len() as u64));
    group.bench_function("16KiB_of_data_rows", |b| {
        b.iter(|| scan_all(std::hint::black_box(&rows)))
    });
    group.finish();
}

fn framing(c: &mut Criterion) {
    let reply = select_reply();
    c.bench_function("next_frame/select_reply", |b| {
        b.iter_batched(
            || reply.clone(),
            |mut buf| {
                let mut n = 0;
                while let Ok(Some(frame)) = next_frame(&mut buf, 1 << 20) {
                    n += frame.body.len();
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, scanner, framing);
criterion_main!(benches);
