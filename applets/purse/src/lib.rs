//! The purse applet (see docs/applets/purse.md).
#![forbid(unsafe_code)]

pub mod wire;
