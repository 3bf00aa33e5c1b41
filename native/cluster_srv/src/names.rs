//! From SRV targets to names: normalisation, and (later) validation into node names.

use hickory_resolver::proto::rr::Name;

/// The target in its canonical text form: lowercase, with no trailing dot.
///
/// Bytes that cannot stand in a host name as they are (a dot inside a label, a backslash, a
/// space, a control or non-ASCII byte) are written as RFC 1035 decimal escapes such as `\032`,
/// so the text stays printable and unambiguous.
pub fn normalize_target(target: &Name) -> String {
    let mut text = String::with_capacity(target.len());
    for (index, label) in target.iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        for &byte in label {
            let byte = byte.to_ascii_lowercase();
            if byte.is_ascii_graphic() && byte != b'.' && byte != b'\\' {
                text.push(char::from(byte));
            } else {
                text.push_str(&format!("\\{byte:03}"));
            }
        }
    }
    if text.is_empty() {
        text.push('.');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn targets_are_lowercased_without_the_trailing_dot() {
        let name = Name::from_str("MyApp-0.MyApp-Headless.Default.svc.cluster.local.").unwrap();
        assert_eq!(
            normalize_target(&name),
            "myapp-0.myapp-headless.default.svc.cluster.local"
        );
    }

    #[test]
    fn the_root_stays_a_dot() {
        assert_eq!(normalize_target(&Name::root()), ".");
    }

    #[test]
    fn odd_bytes_are_escaped_not_dropped() {
        let name = Name::from_labels(vec![&b"a b"[..], &b"example"[..]]).unwrap();
        assert_eq!(normalize_target(&name), "a\\032b.example");
        let name = Name::from_labels(vec![&b"a.b\\\xc3"[..], &b"x"[..]]).unwrap();
        assert_eq!(normalize_target(&name), "a\\046b\\092\\195.x");
    }
}
