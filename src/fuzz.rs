//! Entry points for the `cargo fuzz` targets in `fuzz/` (feature
//! `fuzzing`): every parser that reads bytes from the network or a file.
//!
//! Each function takes arbitrary bytes and panics only when a property
//! fails: a parser that accepts something must give it back unchanged when
//! re-encoded, and the control stream's rules must hold for any sequence.
//! Nothing here is API; the functions exist so the parsers can stay private.

use crate::config::Config;
use crate::sidecar::header::{self, Parsed};
use crate::transport::control::{Inbox, Signal, Violation};
use crate::transport::hello::{self, Hello, ANSWER_LEN, HELLO_LEN};

/// The stream header a forwarding node sends (`sidecar::header`).
pub fn stream_header(data: &[u8]) {
    match header::parse(data) {
        Ok(Parsed::Complete {
            service,
            client,
            len,
        }) => {
            assert!(len <= data.len() && len <= header::MAX_HEADER_LEN);
            // This node sends only the current version: that one must
            // re-encode to its bytes.
            if data[2] == header::VERSION {
                let again = header::encode(&service, client).expect("a parsed name can be encoded");
                assert_eq!(
                    again,
                    data[..len],
                    "re-encoding {service:?} changed the bytes"
                );
            }
        }
        Ok(Parsed::Incomplete { total }) => {
            assert!(total > data.len() && total <= header::MAX_HEADER_LEN);
        }
        Err(e) => {
            // Every refusal maps to a status the other end understands.
            assert_ne!(e.status(), header::Status::Ok);
        }
    }
}

/// The hello and its answer (`transport::hello`), from the first bytes.
pub fn hello(data: &[u8]) {
    if let Some(b) = data.first_chunk::<HELLO_LEN>() {
        if let Ok(h) = Hello::decode(b) {
            assert_eq!(&h.encode(), b, "a decoded hello re-encodes to its bytes");
        }
    }
    if let Some(b) = data.first_chunk::<ANSWER_LEN>() {
        if let Ok(instance) = hello::decode_answer(b) {
            assert_eq!(&hello::encode_answer(instance), b);
        }
    }
}

/// Bytes the peer writes on the control stream (`transport::control`).
pub fn control(data: &[u8]) {
    let mut inbox = Inbox::default();
    let mut delivered = [0usize; Signal::ALL.len()];
    for &byte in data {
        match inbox.accept(byte) {
            Ok(Some(s)) => {
                assert_eq!(Signal::from_byte(byte), Some(s));
                delivered[s as usize] += 1;
            }
            Ok(None) => {}
            Err(Violation::Repeated(s)) => {
                // Only a second RETIRE or DONE breaks the rules; the serving
                // task closes the connection here.
                assert!(matches!(s, Signal::Retire | Signal::Done));
                assert_eq!(
                    (Signal::from_byte(byte), delivered[s as usize]),
                    (Some(s), 1)
                );
                break;
            }
        }
    }
    assert!(
        delivered.iter().all(|n| *n <= 1),
        "a signal reached the owner twice: {delivered:?}"
    );
}

/// A config file: parsing and every semantic check, as `peerpool check`
/// runs them (without reading key files).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text) {
        let _ = config.validate(None);
    }
}
