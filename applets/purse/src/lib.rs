//! The purse applet (see docs/applets/purse.md).
//!
//! * [`wire`]: the byte layouts, MAC inputs, INS codes and status words (the contract
//!   shared with the SAM applet and the host);
//! * [`keyblob`]: sealing and opening the [`wire::KeyBlob`]s that carry card and SAM keys
//!   under a chip-generated transport key;
//! * [`applet`]: the card-side purse ([`load_file`]).
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
pub mod keyblob;
pub mod macs;
pub mod wire;

pub use applet::{PACKAGE_AID, PIN_ID, load_file};
