//! The Tessera card operating system.
//!
//! A [`Card`] runs Java Card-style [`Applet`]s: it parses APDUs, resolves the logical
//! channel and the selected instance, runs the applet inside a store transaction, commits
//! on success and rolls back on any error status, and shapes the response (61xx / GET
//! RESPONSE, 6Cxx). Card memory is a transactional record store with an append-only log
//! whose tearing hook can cut power after any byte written.
//!
//! ```
//! use tessera_os::{Applet, Card, Context, LoadFile, Privileges};
//! use tessera_apdu::{Command, Sw};
//!
//! struct Hello;
//! impl Applet for Hello {
//!     fn process(&mut self, _ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, Sw> {
//!         match cmd.ins { 0x01 => Ok(b"hello".to_vec()), _ => Err(Sw::INS_NOT_SUPPORTED) }
//!     }
//! }
//! let hello = LoadFile { name: "hello", aid: vec![0xF0, 0, 0, 0, 1], multi_selectable: false,
//!                        create: || Box::new(Hello) };
//!
//! let mut card = Card::builder().load_file(hello).build();
//! card.install("hello", &[0xF0, 0, 0, 0, 1, 1], Privileges::default(), &[]).unwrap();
//! card.power_on();
//! assert_eq!(card.transmit_hex("00A4040006F0000000010100").unwrap().sw, Sw::OK);
//! assert_eq!(card.transmit_hex("8001000005").unwrap().data, b"hello");
//! ```
#![forbid(unsafe_code)]
// No panics on paths that APDU bytes or image files reach (tests may unwrap).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

pub mod applet;
pub mod atr;
pub mod card;
pub mod diag;
pub mod image;
pub mod pin;
pub mod store;

pub use applet::{AppState, Applet, Clear, Context, Interface, LoadFile, Privileges};
pub use card::{Card, CardBuilder, CardError, CardProfile, CardState, InstanceRecord, OsError};
pub use image::{ImageError, ImageLock};
pub use pin::Pin;
pub use store::{MemoryUsage, TearPlan};
pub use tessera_apdu::{Command, Response, Sw};

/// The README's embedding example, compiled and run as a doctest so it cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeExample;
