//! The SAM applet (see docs/applets/sam.md).
//!
//! * [`wire`]: the SAM's byte layouts, INS codes and status words;
//! * [`applet`]: the card-side SAM ([`load_file`]).
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod applet;
pub mod wire;

pub use applet::{PACKAGE_AID, PIN_ID, PIN_TRY_LIMIT, load_file};
