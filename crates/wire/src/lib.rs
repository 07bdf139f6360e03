//! Sans-IO PostgreSQL wire protocol for pgherd.
//!
//! A proxy spends its life moving bytes it does not need to understand, so this
//! crate is built around two ways of looking at a byte stream:
//!
//! * [`frame`] finds message boundaries. [`frame::next_frame`] splits one whole
//!   message off a buffer as a zero-copy [`bytes::Bytes`] (used while a
//!   connection logs in), and [`frame::Scanner`] walks a stream *without*
//!   waiting for whole messages, so a 1 GB `DataRow` is forwarded in pieces as it
//!   arrives while small control messages (`ReadyForQuery`, `Terminate`) are
//!   still seen whole.
//! * tag constants and zero-copy typed views of every message the proxy
//!   inspects ([`startup`], [`frontend`], [`backend`]) plus encoders for the
//!   messages it writes itself. No other crate spells a message tag as a
//!   byte literal: a reader greps `frontend::PARSE`, not `b'P'` (which is
//!   also `backend::PARAMETER_STATUS` coming the other way).
//! * [`sqlstate`]: the error codes pgherd sends, under PostgreSQL's names.
//!
//! Nothing here knows about sockets or tokio: every function takes bytes and
//! returns values, so the decoders are unit-tested with byte vectors and fuzzed
//! (see `fuzz/`). Every length read off the wire is checked against a limit
//! before anything is allocated for it.
#![forbid(unsafe_code)]

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod sqlstate;
pub mod startup;

pub mod cstr;

pub use frame::{next_frame, Chunk, Frame, FrameError, Scanner};
pub use startup::{decode_startup, StartupError, StartupPacket};
