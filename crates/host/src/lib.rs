//! The host side of Tessera: what a terminal, gate, issuer or migration program needs.
//!
//! * [`transport`]: the [`transport::Transport`] trait (in-process card, PC/SC reader) with
//!   host-side 61xx/GET RESPONSE, 6Cxx and command chaining.
//! * [`script`]: APDU script formats and their runner.
//! * [`clients`]: typed clients for the purse and SAM applets, built on their wire messages.
//! * [`flows`]: load and pay, with their recovery steps.
#![forbid(unsafe_code)]

pub mod clients;
pub mod flows;
pub mod script;
pub mod transport;
