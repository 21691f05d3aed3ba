//! The SAM applet (see docs/applets/sam.md).
#![forbid(unsafe_code)]

pub mod wire;
