//! JSON-RPC framing for OVSDB: the stream is a sequence of JSON texts with no delimiter.
//! `Framer` finds message boundaries across partial reads by tracking nesting, strings and
//! escapes, and parses each complete message.

use serde_json::Value;

#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Where scanning resumes.
    pos: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Start of the current message (first non-whitespace byte).
    start: Option<usize>,
}

impl Framer {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, if one is buffered. Err for a message that is not JSON
    /// (the connection should then be dropped).
    pub fn next_message(&mut self) -> Option<Result<Value, String>> {
        while self.pos < self.buf.len() {
            let b = self.buf[self.pos];
            let i = self.pos;
            self.pos += 1;
            if self.start.is_none() {
                if b.is_ascii_whitespace() {
                    continue;
                }
                if b != b'{' && b != b'[' {
                    let bad = String::from_utf8_lossy(&self.buf[i..]).into_owned();
                    self.reset_after(self.buf.len());
                    return Some(Err(format!("expected a JSON object, got {bad:?}")));
                }
                self.start = Some(i);
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        let start = self.start.unwrap_or(0);
                        let res = serde_json::from_slice(&self.buf[start..=i])
                            .map_err(|e| format!("invalid JSON message: {e}"));
                        self.reset_after(i + 1);
                        return Some(res);
                    }
                }
                _ => {}
            }
        }
        None
    }

    fn reset_after(&mut self, end: usize) {
        self.buf.drain(..end);
        self.pos = 0;
        self.depth = 0;
        self.in_string = false;
        self.escaped = false;
        self.start = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all(f: &mut Framer) -> Vec<Value> {
        let mut out = vec![];
        while let Some(m) = f.next_message() {
            out.push(m.unwrap());
        }
        out
    }

    #[test]
    fn several_messages_in_one_read() {
        let mut f = Framer::default();
        f.push(
            br#"{"id":1,"result":[]} {"id":2,"result":{"a":"}"}}
[1,2]"#,
        );
        assert_eq!(
            all(&mut f),
            vec![
                json!({"id":1,"result":[]}),
                json!({"id":2,"result":{"a":"}"}}),
                json!([1, 2])
            ]
        );
    }

    #[test]
    fn split_at_every_byte() {
        let text = br#"{"method":"update","params":["m",{"T":{"u":{"new":{"s":"a \"quoted\" {brace} \\ back"}}}}],"id":null}{"id":7,"result":{}}"#;
        for cut in 0..text.len() {
            let mut f = Framer::default();
            f.push(&text[..cut]);
            let mut got = all(&mut f);
            f.push(&text[cut..]);
            got.extend(all(&mut f));
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(
                got[0]["params"][1]["T"]["u"]["new"]["s"],
                "a \"quoted\" {brace} \\ back"
            );
            assert_eq!(got[1]["id"], 7);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut f = Framer::default();
        f.push(b"hello");
        assert!(f.next_message().unwrap().is_err());
        f.push(br#"{"ok":true}"#);
        assert_eq!(f.next_message().unwrap().unwrap(), json!({"ok": true}));
    }
}
