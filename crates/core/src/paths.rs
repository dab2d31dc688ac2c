//! Safe path components from arbitrary names (databases, nodes, tags).
//!
//! A name taken from a database, a node or a tag can hold anything (`/`, `..`, spaces, quotes,
//! control characters, any Unicode). [`encode_path_component`] turns it into one component that
//! cannot leave its directory, cannot be hidden or special (`.`/`..`), is never empty, and maps
//! different names to different components.

/// Longest component [`encode_path_component`] returns, in bytes. Leaves room under the usual
/// 255-byte file name limit for prefixes and suffixes (dates, codes, extensions).
pub const MAX_COMPONENT_LEN: usize = 200;

/// What the empty name encodes to. No other name can encode to it: the encoder only emits `%`
/// followed by two uppercase hexadecimal digits.
pub const EMPTY_COMPONENT: &str = "%empty";

/// Separator before the hash of a shortened component; never produced otherwise.
const HASH_SEPARATOR: char = '~';

fn is_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// 64-bit FNV-1a.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Encodes `name` as one safe path component.
///
/// - ASCII letters, digits, `_`, `-` and `.` are kept, except the dots that begin the name
///   (no hidden files, no `.` or `..`);
/// - every other byte of the UTF-8 text becomes `%XX` (uppercase hex), `%` itself included;
/// - the empty name becomes [`EMPTY_COMPONENT`];
/// - a result longer than [`MAX_COMPONENT_LEN`] bytes is cut (never inside a `%XX`) and ends in
///   `~` plus 16 hex digits of the FNV-1a hash of the whole name.
///
/// Injective for results up to [`MAX_COMPONENT_LEN`] bytes ([`decode_path_component`] inverts
/// them); shortened results are distinct from every unshortened one, and from each other unless
/// two names share the kept prefix and a 64-bit hash.
pub fn encode_path_component(name: &str) -> String {
    if name.is_empty() {
        return EMPTY_COMPONENT.to_string();
    }
    let mut out = String::with_capacity(name.len());
    let mut leading = true;
    for &b in name.as_bytes() {
        leading &= b == b'.';
        if is_safe(b) && !leading {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() <= MAX_COMPONENT_LEN {
        return out;
    }
    let suffix = format!("{HASH_SEPARATOR}{:016x}", fnv1a64(name.as_bytes()));
    let mut cut = MAX_COMPONENT_LEN - suffix.len();
    // Do not split a %XX escape.
    if let Some(pos) = out[cut.saturating_sub(2)..cut].find('%') {
        cut = cut - 2 + pos;
    }
    out.truncate(cut);
    out.push_str(&suffix);
    out
}

/// Inverts [`encode_path_component`]; `None` for a shortened (hashed) component or text the
/// encoder cannot produce.
pub fn decode_path_component(component: &str) -> Option<String> {
    if component == EMPTY_COMPONENT {
        return Some(String::new());
    }
    if component.is_empty() || component.contains(HASH_SEPARATOR) {
        return None;
    }
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = component.get(i + 1..i + 3)?;
            if !hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
            {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    (encode_path_component(&name) == component).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn assert_safe(c: &str) {
        assert!(!c.is_empty());
        assert!(c.len() <= MAX_COMPONENT_LEN, "{} bytes", c.len());
        assert!(!c.starts_with('.'), "{c}");
        assert!(c != "." && c != "..");
        assert!(
            c.bytes().all(|b| is_safe(b) || b == b'%' || b == b'~'),
            "{c}"
        );
        assert!(!c.contains('/') && !c.contains('\0'));
    }

    #[test]
    fn encodes_table() {
        let cases: &[(&str, &str)] = &[
            ("", "%empty"),
            ("mydb", "mydb"),
            ("My_DB-2.prod", "My_DB-2.prod"),
            ("my db", "my%20db"),
            ("../x", "%2E%2E%2Fx"),
            ("/", "%2F"),
            (".", "%2E"),
            ("..", "%2E%2E"),
            ("...x.y", "%2E%2E%2Ex.y"),
            ("a/../b", "a%2F..%2Fb"),
            (".hidden", "%2Ehidden"),
            ("a.", "a."),
            ("100%", "100%25"),
            ("%2E", "%252E"),
            ("it's \"q\"", "it%27s%20%22q%22"),
            ("back\\slash", "back%5Cslash"),
            ("tab\tnl\n", "tab%09nl%0A"),
            ("nul\0", "nul%00"),
            ("é", "%C3%A9"),
            ("日本", "%E6%97%A5%E6%9C%AC"),
            ("~", "%7E"),
            ("-rf", "-rf"),
            ("%empty", "%25empty"),
        ];
        for (name, want) in cases {
            let got = encode_path_component(name);
            assert_eq!(&got, want, "{name:?}");
            assert_safe(&got);
            assert_eq!(decode_path_component(&got).as_deref(), Some(*name));
        }
    }

    #[test]
    fn long_names_are_shortened_with_a_hash() {
        let exact = "a".repeat(MAX_COMPONENT_LEN);
        assert_eq!(encode_path_component(&exact), exact);
        let long = "a".repeat(MAX_COMPONENT_LEN + 1);
        let c = encode_path_component(&long);
        assert_eq!(c.len(), MAX_COMPONENT_LEN);
        assert!(c.contains('~'));
        assert_eq!(decode_path_component(&c), None);
        let other = format!("{}b", "a".repeat(MAX_COMPONENT_LEN));
        assert_ne!(encode_path_component(&other), c);
        // Escapes are never cut in half.
        for pad in 0..4 {
            let name = format!("{}{}", "a".repeat(pad), "é".repeat(100));
            let c = encode_path_component(&name);
            assert_safe(&c);
            let body = c.split('~').next().unwrap();
            let b = body.as_bytes();
            for (i, ch) in b.iter().enumerate() {
                if *ch == b'%' {
                    assert!(i + 2 < b.len(), "{c}");
                }
            }
        }
    }

    #[test]
    fn fnv_matches_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    /// Property-style: every name from a generated set maps to a safe, distinct component.
    #[test]
    fn injective_and_safe_over_many_names() {
        let alphabet = [
            "a", "Z", "0", ".", "-", "_", "/", "%", " ", "'", "\"", "\\", "é", "日", "\0", "~",
            "25", "2E",
        ];
        let mut names: Vec<String> = vec![String::new()];
        // All strings of length up to 3 over the alphabet (~6000 names).
        let mut frontier = vec![String::new()];
        for _ in 0..3 {
            let mut next = Vec::new();
            for prefix in &frontier {
                for a in alphabet {
                    next.push(format!("{prefix}{a}"));
                }
            }
            names.extend(next.iter().cloned());
            frontier = next;
        }
        // Pseudo-random longer names (deterministic LCG), some past the length limit.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..3000 {
            let mut s = String::new();
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (x >> 33) % 120;
            for _ in 0..len {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push_str(alphabet[((x >> 33) % alphabet.len() as u64) as usize]);
            }
            names.push(s);
        }
        names.sort();
        names.dedup();
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut shortened = 0;
        for n in &names {
            let c = encode_path_component(n);
            shortened += usize::from(c.contains('~'));
            assert_safe(&c);
            if let Some(prev) = seen.insert(c.clone(), n.clone()) {
                panic!("{prev:?} and {n:?} both encode to {c:?}");
            }
            if !c.contains('~') {
                assert_eq!(decode_path_component(&c).as_deref(), Some(n.as_str()));
            }
        }
        assert!(shortened > 100, "only {shortened} long names");
    }

    #[test]
    fn decode_rejects_foreign_text() {
        for c in [
            "", "%", "%2", "%zz", "%2e", ".x", "a/b", "a~0123", "%C3", "a b",
        ] {
            assert_eq!(decode_path_component(c), None, "{c:?}");
        }
    }
}
