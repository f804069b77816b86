//! Which addresses ccm may send a webhook to: the one rule, used by ingest when a URL with an
//! IP literal is stored and by ccm-webhooks when it connects (IP literals, and every address a
//! host name resolves to).
//!
//! An address is public unless it is in a special-purpose range that is not globally
//! reachable (the IANA IPv4 and IPv6 special-purpose address registries), or is multicast,
//! broadcast or a deprecated local range. An IPv6 address that carries an IPv4 address
//! (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`,
//! 6to4 `2002:aabb:ccdd::/48`) is judged by that IPv4 address, since that is where a
//! connection to it ends up. Outside global unicast (`2000::/3`) every IPv6 address is refused:
//! what lives there (discard-only, local-use NAT64, SRv6 SIDs, unassigned space) is never a
//! webhook receiver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `0.0.0.0/8` other than `0.0.0.0`: "this network".
    ThisNetwork,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// `100.64.0.0/10`, carrier-grade NAT: inside some provider networks.
    SharedAddressSpace,
    /// `169.254/16` (cloud metadata services), `fe80::/10`.
    LinkLocal,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18/15`, `2001:2::/48`.
    Benchmarking,
    /// `fc00::/7`.
    UniqueLocal,
    /// `fec0::/10`, deprecated but still routed inside some networks.
    SiteLocal,
    /// Protocol assignments and reserved space: `192.0.0/24`, `192.88.99/24` (6to4 relays),
    /// `240/4`, `2001::/23` (Teredo among others), and IPv6 outside `2000::/3`.
    Reserved,
}

impl Refusal {
    /// The reason in a few words, for logs and API answers.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::ThisNetwork => "\"this network\" (0.0.0.0/8)",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::SharedAddressSpace => "shared address space (carrier-grade NAT)",
            Self::LinkLocal => "link-local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Documentation => "reserved for documentation",
            Self::Benchmarking => "reserved for benchmarking",
            Self::UniqueLocal => "unique local",
            Self::SiteLocal => "site-local",
            Self::Reserved => "reserved",
        }
    }
}

/// An address that is not public, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{ip} is not public ({})", .reason.describe())]
pub struct RefusedAddress {
    pub ip: IpAddr,
    pub reason: Refusal,
}

/// Whether a webhook may be sent to `ip`.
pub fn is_public(ip: IpAddr) -> bool {
    refusal(ip).is_none()
}

/// `Ok` when a webhook may be sent to `ip`, otherwise why not.
pub fn check(ip: IpAddr) -> Result<(), RefusedAddress> {
    match refusal(ip) {
        None => Ok(()),
        Some(reason) => Err(RefusedAddress { ip, reason }),
    }
}

/// Why `ip` is refused; None when it is public.
pub fn refusal(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(ip) => refusal_v4(ip),
        IpAddr::V6(ip) => refusal_v6(ip),
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<Refusal> {
    use Refusal::*;
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() => Unspecified,
        _ if ip.is_broadcast() => Broadcast,
        (0, ..) => ThisNetwork,
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => Private,
        (100, 64..=127, _) => SharedAddressSpace,
        (127, ..) => Loopback,
        (169, 254, _) => LinkLocal,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Documentation,
        (192, 0, 0) | (192, 88, 99) | (240..=255, ..) => Reserved,
        (198, 18..=19, _) => Benchmarking,
        (224..=239, ..) => Multicast,
        _ => return None,
    })
}

fn refusal_v6(ip: Ipv6Addr) -> Option<Refusal> {
    use Refusal::*;
    if ip.is_unspecified() {
        return Some(Unspecified);
    }
    if ip.is_loopback() {
        return Some(Loopback);
    }
    if let Some(v4) = embedded_v4(ip) {
        return refusal_v4(v4);
    }
    let s = ip.segments();
    Some(match s[0] {
        0xff00..=0xffff => Multicast,
        0xfe80..=0xfebf => LinkLocal,
        0xfec0..=0xfeff => SiteLocal,
        0xfc00..=0xfdff => UniqueLocal,
        0x2001 if s[1] == 0x0db8 => Documentation,
        0x2001 if s[1] == 0x0002 && s[2] == 0 => Benchmarking,
        0x2001 if s[1] < 0x0200 => Reserved,
        0x3fff if s[1] < 0x1000 => Documentation,
        0x2000..=0x3fff => return None,
        _ => Reserved,
    })
}

/// The IPv4 address an IPv6 address carries, for the forms that deliver to it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // IPv4-mapped ::ffff:a.b.c.d and IPv4-compatible ::a.b.c.d (deprecated).
        [0, 0, 0, 0, 0, 0xffff | 0, _, _] => Some(low),
        // NAT64, well-known prefix (RFC 6052).
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        // 6to4 (RFC 3056): the IPv4 address follows the prefix.
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! The rule is checked against an independent oracle: a table of the ranges written as
    //! CIDR prefixes, the longest matching prefix deciding, as the registries read. Random
    //! addresses are drawn inside each range and just outside its two ends.

    use proptest::prelude::*;

    use super::*;
    use Refusal::*;

    /// What the oracle says of a prefix: refused for a reason, public, or judged by the IPv4
    /// address it carries (at `shift` bits from the low end).
    #[derive(Debug, Clone, Copy)]
    enum Verdict {
        Refused(Refusal),
        Public,
        Embedded { shift: u32 },
    }

    const V4: &[(&str, Refusal)] = &[
        ("0.0.0.0/32", Unspecified),
        ("0.0.0.0/8", ThisNetwork),
        ("10.0.0.0/8", Private),
        ("100.64.0.0/10", SharedAddressSpace),
        ("127.0.0.0/8", Loopback),
        ("169.254.0.0/16", LinkLocal),
        ("172.16.0.0/12", Private),
        ("192.0.0.0/24", Reserved),
        ("192.0.2.0/24", Documentation),
        ("192.88.99.0/24", Reserved),
        ("192.168.0.0/16", Private),
        ("198.18.0.0/15", Benchmarking),
        ("198.51.100.0/24", Documentation),
        ("203.0.113.0/24", Documentation),
        ("224.0.0.0/4", Multicast),
        ("240.0.0.0/4", Reserved),
        ("255.255.255.255/32", Broadcast),
    ];

    const V6: &[(&str, Verdict)] = &[
        ("::/0", Verdict::Refused(Reserved)),
        ("2000::/3", Verdict::Public),
        ("::/128", Verdict::Refused(Unspecified)),
        ("::1/128", Verdict::Refused(Loopback)),
        ("::/96", Verdict::Embedded { shift: 0 }),
        ("::ffff:0:0/96", Verdict::Embedded { shift: 0 }),
        ("64:ff9b::/96", Verdict::Embedded { shift: 0 }),
        ("2002::/16", Verdict::Embedded { shift: 80 }),
        ("ff00::/8", Verdict::Refused(Multicast)),
        ("fe80::/10", Verdict::Refused(LinkLocal)),
        ("fec0::/10", Verdict::Refused(SiteLocal)),
        ("fc00::/7", Verdict::Refused(UniqueLocal)),
        ("2001::/23", Verdict::Refused(Reserved)),
        ("2001:2::/48", Verdict::Refused(Benchmarking)),
        ("2001:db8::/32", Verdict::Refused(Documentation)),
        ("3fff::/20", Verdict::Refused(Documentation)),
    ];

    fn cidr(text: &str) -> (IpAddr, u32) {
        let (ip, len) = text.split_once('/').expect("a/len");
        (ip.parse().expect("ip"), len.parse().expect("len"))
    }

    fn oracle_v4(ip: u32) -> Option<Refusal> {
        V4.iter()
            .filter_map(|(text, reason)| {
                let (IpAddr::V4(net), len) = cidr(text) else {
                    unreachable!()
                };
                let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                (ip & mask == u32::from(net) & mask).then_some((len, *reason))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, reason)| reason)
    }

    fn oracle_v6(ip: u128) -> Option<Refusal> {
        let (_, verdict) = V6
            .iter()
            .filter_map(|(text, verdict)| {
                let (IpAddr::V6(net), len) = cidr(text) else {
                    unreachable!()
                };
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                (ip & mask == u128::from(net) & mask).then_some((len, *verdict))
            })
            .max_by_key(|(len, _)| *len)
            .expect("::/0 matches everything");
        match verdict {
            Verdict::Refused(reason) => Some(reason),
            Verdict::Public => None,
            Verdict::Embedded { shift } => oracle_v4((ip >> shift) as u32),
        }
    }

    /// An address inside prefix `i` of `table` (or just outside either end of it).
    fn near_v4() -> impl Strategy<Value = u32> {
        (0..V4.len(), any::<u32>(), 0..4u8).prop_map(|(i, bits, place)| {
            let (IpAddr::V4(net), len) = cidr(V4[i].0) else {
                unreachable!()
            };
            let host = u32::MAX.checked_shr(len).unwrap_or(0);
            let first = u32::from(net) & !host;
            match place {
                0 => first.wrapping_sub(1),
                1 => (first | host).wrapping_add(1),
                _ => first | (bits & host),
            }
        })
    }

    fn near_v6() -> impl Strategy<Value = u128> {
        (0..V6.len(), any::<u128>(), 0..4u8).prop_map(|(i, bits, place)| {
            let (IpAddr::V6(net), len) = cidr(V6[i].0) else {
                unreachable!()
            };
            let host = u128::MAX.checked_shr(len).unwrap_or(0);
            let first = u128::from(net) & !host;
            match place {
                0 => first.wrapping_sub(1),
                1 => (first | host).wrapping_add(1),
                _ => first | (bits & host),
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn ipv4_addresses_are_judged_as_the_registry_reads(ip in prop_oneof![near_v4(), any::<u32>()]) {
            let addr = IpAddr::V4(Ipv4Addr::from(ip));
            prop_assert_eq!(refusal(addr), oracle_v4(ip), "{}", addr);
        }

        #[test]
        fn ipv6_addresses_are_judged_as_the_registry_reads(ip in prop_oneof![near_v6(), any::<u128>()]) {
            let addr = IpAddr::V6(Ipv6Addr::from(ip));
            prop_assert_eq!(refusal(addr), oracle_v6(ip), "{}", addr);
        }

        /// However an IPv4 address is wrapped in IPv6, it is judged as itself.
        #[test]
        fn an_embedded_ipv4_address_is_judged_by_the_ipv4_rule(ip in prop_oneof![near_v4(), any::<u32>()], rest in any::<u64>()) {
            let v4 = Ipv4Addr::from(ip);
            let public = is_public(IpAddr::V4(v4));
            let forms = [
                v4.to_ipv6_mapped(),
                v4.to_ipv6_compatible(),
                Ipv6Addr::from((0x64_u128 << 112) | (0xff9b_u128 << 96) | u128::from(ip)),
                Ipv6Addr::from((0x2002_u128 << 112) | (u128::from(ip) << 80) | u128::from(rest)),
            ];
            for v6 in forms {
                prop_assert_eq!(is_public(IpAddr::V6(v6)), public, "{} carrying {}", v6, v4);
            }
        }
    }

    /// The ranges the issue named, one address each, and public addresses that must pass.
    #[test]
    fn named_ranges_are_refused_and_public_addresses_accepted() {
        let refused = [
            ("0.1.2.3", ThisNetwork),
            ("0.0.0.0", Unspecified),
            ("10.1.2.3", Private),
            ("172.31.255.255", Private),
            ("192.168.0.1", Private),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.254", SharedAddressSpace),
            ("127.0.0.1", Loopback),
            ("169.254.169.254", LinkLocal),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("240.0.0.1", Reserved),
            ("255.255.255.255", Broadcast),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("192.0.2.1", Documentation),
            ("203.0.113.9", Documentation),
            ("::", Unspecified),
            ("::1", Loopback),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::127.0.0.1", Loopback),
            ("::10.0.0.1", Private),
            ("64:ff9b::10.0.0.1", Private),
            ("64:ff9b::7f00:1", Loopback),
            ("64:ff9b:1::1", Reserved),
            ("2002:7f00:1::1", Loopback),
            ("2002:a9fe:a9fe::", LinkLocal),
            ("fec0::1", SiteLocal),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fe80::1", LinkLocal),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001::1", Reserved),
            ("100::1", Reserved),
        ];
        for (text, reason) in refused {
            let ip: IpAddr = text.parse().expect("ip");
            assert_eq!(refusal(ip), Some(reason), "{text}");
            assert!(!is_public(ip), "{text}");
        }
        for text in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:4860:4860::8888",
        ] {
            let ip: IpAddr = text.parse().expect("ip");
            assert_eq!(check(ip), Ok(()), "{text}");
        }
        let refused = check("::ffff:127.0.0.1".parse().expect("ip")).expect_err("refused");
        assert_eq!(
            refused.to_string(),
            "::ffff:127.0.0.1 is not public (loopback)"
        );
    }
}
