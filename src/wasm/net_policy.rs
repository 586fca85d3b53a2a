//! Which addresses a capsule's HTTP request may reach, and secret handling in requests and
//! responses.
//!
//! The `net` grant names hosts; this module guards what those names resolve to. A request
//! goes only to addresses that were vetted after DNS resolution (and IP literals are vetted
//! the same way, unlike the reference, whose filter lived only in its DNS resolver): no
//! loopback, private, link-local, carrier-grade NAT, multicast or unspecified address, in
//! IPv4, IPv6 or IPv4 embedded in IPv6 — unless the operator allows private networks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` is on the public internet (the only place a capsule may reach by default).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_public_v4(v4);
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                || first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (b & 0xc0) == 64) // carrier-grade NAT 100.64/10
        || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
        || a >= 240) // reserved
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible or NAT64 IPv6 address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let compatible = s[..6].iter().all(|x| *x == 0) && !v6.is_loopback() && !v6.is_unspecified();
    let nat64 = s[0] == 0x0064 && s[1] == 0xff9b && s[2..6].iter().all(|x| *x == 0);
    (compatible || nat64).then_some(tail)
}

/// Why a header template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{secret:` without its `}}`.
    #[error("unterminated {{{{secret:…}}}} template")]
    Unterminated,
    /// The template names a secret the capsule did not declare.
    #[error("{name} is not a secret this capsule declared")]
    Undeclared {
        /// The name in the template.
        name: String,
    },
}

/// Replaces every `{{secret:NAME}}` in `template` with the capsule's declared secret `NAME`;
/// the values used are added to `used` (for redaction). An unknown name is an error: a
/// template never goes out half-filled.
pub fn fill_secrets(
    template: &str,
    secrets: &std::collections::BTreeMap<String, String>,
    used: &mut Vec<String>,
) -> Result<String, TemplateError> {
    const OPEN: &str = "{{secret:";
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let end = after.find("}}").ok_or(TemplateError::Unterminated)?;
        let name = &after[..end];
        let value = secrets.get(name).ok_or_else(|| TemplateError::Undeclared { name: name.to_owned() })?;
        out.push_str(value);
        if !value.is_empty() && !used.contains(value) {
            used.push(value.clone());
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What replaces a secret echoed back in a response.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// `bytes` with every occurrence of each secret replaced by [`REDACTED`].
pub fn redact(bytes: &[u8], secrets: &[String]) -> Vec<u8> {
    let mut current = bytes.to_vec();
    for secret in secrets.iter().map(String::as_bytes).filter(|s| !s.is_empty()) {
        if current.len() < secret.len() {
            continue;
        }
        let mut out = Vec::with_capacity(current.len());
        let mut i = 0;
        while i < current.len() {
            if current[i..].starts_with(secret) {
                out.extend_from_slice(REDACTED);
                i += secret.len();
            } else {
                out.push(current[i]);
                i += 1;
            }
        }
        current = out;
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(text: &str) -> bool {
        is_public(text.parse().expect("ip"))
    }

    #[test]
    fn private_loopback_and_embedded_addresses_are_not_public() {
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "ff02::1",
        ] {
            assert!(!public(blocked), "{blocked} must be refused");
        }
        for allowed in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(public(allowed), "{allowed} is public");
        }
    }

    #[test]
    fn secrets_are_filled_only_when_declared_and_redacted_in_answers() {
        let secrets = [("API_KEY".to_owned(), "sk-live-123".to_owned())].into_iter().collect();
        let mut used = Vec::new();
        assert_eq!(
            fill_secrets("Bearer {{secret:API_KEY}}", &secrets, &mut used).expect("filled"),
            "Bearer sk-live-123"
        );
        assert_eq!(used, vec!["sk-live-123"]);
        assert_eq!(
            fill_secrets("{{secret:OTHER}}", &secrets, &mut used),
            Err(TemplateError::Undeclared { name: "OTHER".to_owned() })
        );
        assert_eq!(fill_secrets("{{secret:API_KEY", &secrets, &mut used), Err(TemplateError::Unterminated));
        assert_eq!(TemplateError::Unterminated.to_string(), "unterminated {{secret:…}} template");
        assert_eq!(redact(b"echo: sk-live-123 and sk-live-123!", &used), b"echo: [REDACTED] and [REDACTED]!");
        assert_eq!(redact(b"nothing", &used), b"nothing");
    }
}
