//! IP addresses and CIDR blocks as Istio writes them in L4 matches
//! (`destinationSubnets`, `sourceSubnet`): `10.1.0.0/16`, or a bare
//! address meaning exactly that address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address block: `len` leading bits of `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// `a.b.c.d/len`, `a.b.c.d`, or their IPv6 forms; None when it is neither.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (ip, len) = match text.trim().split_once('/') {
            Some((ip, len)) => (ip, Some(len.parse::<u8>().ok()?)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = ip.parse().ok()?;
        let max = max_len(addr);
        let len = len.unwrap_or(max);
        (len <= max).then_some(Cidr { addr, len })
    }

    /// Whether `ip` lies in this block (never across address families).
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.len),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.len),
            _ => false,
        }
    }

    /// The block with the bits past its prefix cleared (`10.1.2.3/8` is `10.0.0.0/8`).
    pub fn network(&self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask(u32::BITS, self.len) as u32)),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask(u128::BITS, self.len))),
        };
        Cidr { addr, len: self.len }
    }

    /// Whether every address of `other` lies in this block.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains_ip(other.addr)
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// The first `len` of `bits` bits set.
fn mask(bits: u32, len: u8) -> u128 {
    let len = u32::from(len).min(bits);
    if len == 0 {
        return 0;
    }
    let all = u128::MAX >> (128 - bits);
    all & !((1u128 << (bits - len)) - 1)
}

/// Whether the first `len` bits of `a` and `b` agree.
fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let (whole, rest) = (usize::from(len / 8), len % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn blocks_hold_their_addresses_and_nothing_else() {
        let net = Cidr::parse("10.96.0.0/12").expect("parses");
        assert!(net.contains_ip(ip("10.96.0.10")));
        assert!(net.contains_ip(ip("10.111.255.255")));
        assert!(!net.contains_ip(ip("10.112.0.0")));
        assert!(!net.contains_ip(ip("::ffff:10.96.0.10")), "never across families");
        let host = Cidr::parse("10.96.0.10").expect("a bare address");
        assert_eq!(host.len, 32);
        assert!(host.contains_ip(ip("10.96.0.10")) && !host.contains_ip(ip("10.96.0.11")));
        assert!(Cidr::parse("0.0.0.0/0").expect("all").contains_ip(ip("192.0.2.1")));
        let v6 = Cidr::parse("fd00:10::/33").expect("v6");
        assert!(v6.contains_ip(ip("fd00:10:7fff::1")) && !v6.contains_ip(ip("fd00:10:8000::1")));
    }

    #[test]
    fn a_block_contains_the_narrower_blocks_inside_it() {
        let wide = Cidr::parse("10.0.0.0/8").unwrap();
        let narrow = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(wide.contains(&narrow) && wide.contains(&wide));
        assert!(!narrow.contains(&wide));
        assert!(!narrow.contains(&Cidr::parse("10.2.0.0/16").unwrap()));
    }

    #[test]
    fn a_blocks_network_clears_the_bits_past_its_prefix() {
        let cases = [
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("192.0.2.255/0", "0.0.0.0/0"),
            ("fd00:10::1/33", "fd00:10::/33"),
            ("fd00::1", "fd00::1/128"),
        ];
        for (text, network) in cases {
            let got = Cidr::parse(text).expect("parses").network();
            assert_eq!(format!("{}/{}", got.addr, got.len), network, "{text}");
        }
    }

    #[test]
    fn malformed_blocks_are_refused() {
        for text in ["", "10.0.0.0/33", "10.0.0/8", "10.0.0.0/", "::/129", "host/8", "10.0.0.0/-1"] {
            assert_eq!(Cidr::parse(text), None, "{text:?}");
        }
    }
}
