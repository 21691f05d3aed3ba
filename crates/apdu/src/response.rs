use crate::{ApduError, Sw};
use std::fmt;

/// A response APDU: data then SW1 SW2.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub data: Vec<u8>,
    pub sw: Sw,
}

impl Default for Sw {
    fn default() -> Self {
        Sw::OK
    }
}

impl Response {
    pub fn ok(data: impl Into<Vec<u8>>) -> Response {
        Response {
            data: data.into(),
            sw: Sw::OK,
        }
    }
    pub fn status(sw: Sw) -> Response {
        Response {
            data: Vec::new(),
            sw,
        }
    }
    pub fn parse(bytes: &[u8]) -> Result<Response, ApduError> {
        match bytes {
            [data @ .., sw1, sw2] => Ok(Response {
                data: data.to_vec(),
                sw: Sw::from_bytes(*sw1, *sw2),
            }),
            _ => Err(ApduError::ResponseTooShort(bytes.len())),
        }
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.data.len() + 2);
        v.extend_from_slice(&self.data);
        v.extend_from_slice(&self.sw.to_bytes());
        v
    }
    /// `Ok(data)` on 9000, `Err(sw)` otherwise.
    pub fn into_result(self) -> Result<Vec<u8>, Sw> {
        if self.sw == Sw::OK {
            Ok(self.data)
        } else {
            Err(self.sw)
        }
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Response {{ data={} sw={:?} }}",
            hex::encode_upper(&self.data),
            self.sw
        )
    }
}
