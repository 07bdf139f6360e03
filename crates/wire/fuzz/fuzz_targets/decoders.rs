//! Feeds arbitrary bytes to every decoder a peer can reach: startup packets,
//! framing, the streaming scanner and the typed message views. None may
//! panic, and the scanner must account for every byte exactly once.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgherd_wire::backend::{self, AuthRequest, ErrorFields};
use pgherd_wire::startup::EncryptionRequest;
use pgherd_wire::{decode_startup, frontend, next_frame, Chunk, Scanner};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let _ = decode_startup(&mut buf);
    if let Some(head) = data.get(..8) {
        let head: [u8; 8] = head.try_into().expect("eight bytes");
        let _ = EncryptionRequest::from_head(&head);
    }

    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = next_frame(&mut buf, 1 << 16) {
        let body = &frame.body[..];
        let _ = ErrorFields::parse(body);
        let _ = AuthRequest::parse(body);
        let _ = backend::parameter_status_view(body);
        let _ = backend::backend_key_data_view(body);
        let _ = frontend::password(body);
        let _ = frontend::SaslInitialResponse::parse(body);
        if let Some(parse) = frontend::Parse::from_body(body) {
            let _ = parse.query();
        }
        let _ = frontend::Bind::from_body(body);
        let _ = frontend::Target::from_body(body);
    }

    // Feed the scanner in two uneven pieces; every byte must be reported once.
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut scanner = Scanner::new(1 << 16);
    let mut pending: Vec<u8> = Vec::new();
    let mut consumed = 0usize;
    for piece in [&data[..split], &data[split..]] {
        pending.extend_from_slice(piece);
        loop {
            match scanner.next(&pending, |t| t == b'Z' || t == b'X') {
                Ok(Chunk::Opaque { len, .. }) | Ok(Chunk::Message { len, .. }) => {
                    assert!(len > 0 && len <= pending.len());
                    pending.drain(..len);
                    consumed += len;
                }
                Ok(Chunk::NeedMore) | Err(_) => break,
            }
        }
    }
    assert!(consumed + pending.len() == data.len());
});
