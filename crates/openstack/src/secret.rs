//! [`Secret`]: a string that never shows itself in `Debug` or `Display`.

use std::fmt;

/// A password, application-credential secret or token.
///
/// `Debug` and `Display` both print `***`, so a secret inside a config struct, an error or a
/// `tracing` field cannot be logged by accident. The value is reached only through
/// [`Secret::expose`], which is called where the secret goes on the wire.
#[derive(Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: only for building a request.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s:#?}"), "***");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            password: Secret,
            other: Option<Secret>,
        }
        let h = Holder {
            password: s.clone(),
            other: Some(Secret::from("tok-abc")),
        };
        let dbg = format!("{h:?} {h:#?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("tok-abc"), "{dbg}");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn deserializes_transparently() {
        let s: Secret = serde_json::from_str("\"pw\"").unwrap();
        assert_eq!(s.expose(), "pw");
    }
}
