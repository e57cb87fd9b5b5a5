//! Just enough XML for S3's answers: the text of named elements, in document order.
//!
//! S3's LIST (`ListBucketResult`), multi-object DELETE (`DeleteResult`) and error documents are
//! flat and machine-written, so a tag scanner that finds `<Name>text</Name>` and decodes the five
//! predefined entities and numeric references is all that is needed — no XML crate, and nothing
//! here can panic on hostile input (a property test feeds it arbitrary bytes).

/// Texts of every element named `name` (without attributes handling beyond skipping them).
pub fn elements(doc: &str, name: &str) -> Vec<String> {
    let open = format!("<{name}");
    let close = format!("</{name}>");
    let mut out = Vec::new();
    let mut rest = doc;
    loop {
        // The next `<name` followed by `>`, `/` or white space (not `<nameOther`).
        let mut from = 0;
        let start = loop {
            let Some(i) = rest[from..].find(&open) else { break None };
            let at = from + i;
            match rest.as_bytes().get(at + open.len()) {
                Some(b'>' | b'/' | b' ' | b'\t' | b'\r' | b'\n') => break Some(at),
                _ => from = at + open.len(),
            }
        };
        let Some(start) = start else { break };
        let after = &rest[start..];
        let Some(gt) = after.find('>') else { break };
        if after[..gt].ends_with('/') {
            out.push(String::new());
            rest = &after[gt + 1..];
            continue;
        }
        let body = &after[gt + 1..];
        let Some(end) = body.find(&close) else { break };
        out.push(unescape(&body[..end]));
        rest = &body[end + close.len()..];
    }
    out
}

/// The text of the first element named `name`.
pub fn first(doc: &str, name: &str) -> Option<String> {
    elements(doc, name).into_iter().next()
}

/// Decodes `&lt;` `&gt;` `&amp;` `&quot;` `&apos;` and `&#N;`/`&#xN;`; anything else is kept.
pub fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let decoded = tail.find(';').filter(|&j| j <= 12).and_then(|j| {
            let ent = &tail[1..j];
            let ch = match ent {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => ent
                    .strip_prefix("#x")
                    .map(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| ent.strip_prefix('#').map(|d| d.parse::<u32>().ok()))
                    .flatten()
                    .and_then(char::from_u32),
            };
            ch.map(|c| (c, j))
        });
        match decoded {
            Some((c, j)) => {
                out.push(c);
                rest = &tail[j + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escapes text for an XML element body.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn list_result() {
        let doc = r#"<?xml version="1.0"?><ListBucketResult xmlns="x"><Name>b</Name><IsTruncated>true</IsTruncated>
            <Contents><Key>p/0000000a</Key><Size>4</Size></Contents><Contents><Key>a&amp;b&#x3c;&#62;</Key></Contents>
            <NextMarker/></ListBucketResult>"#;
        assert_eq!(elements(doc, "Key"), vec!["p/0000000a", "a&b<>"]);
        assert_eq!(first(doc, "IsTruncated").as_deref(), Some("true"));
        assert_eq!(first(doc, "NextMarker").as_deref(), Some(""));
        assert_eq!(first(doc, "Missing"), None);
    }

    #[test]
    fn escape_round_trip() {
        let s = "a<b>&\"c'd";
        assert_eq!(unescape(&escape(s)), s);
        assert_eq!(unescape("&bogus; &#xffffffff; &"), "&bogus; &#xffffffff; &");
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(doc in ".{0,400}", name in "[A-Za-z]{1,8}") {
            let _ = elements(&doc, &name);
            let _ = unescape(&doc);
        }

        #[test]
        fn keys_survive_escaping(keys in proptest::collection::vec("[ -~]{0,40}", 0..8)) {
            let doc: String = keys.iter().map(|k| format!("<Contents><Key>{}</Key></Contents>", escape(k))).collect();
            prop_assert_eq!(elements(&doc, "Key"), keys);
        }
    }
}
