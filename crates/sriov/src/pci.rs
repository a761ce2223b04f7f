use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A PCI function's address as sysfs names it: `DOMAIN:BUS:DEVICE.FUNCTION` in hex, e.g.
/// `0000:01:10.2` (domain 0, bus 1, device 0x10, function 2). Ordered as the bus is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    domain: u32,
    bus: u8,
    device: u8,
    function: u8,
}

impl PciAddress {
    /// None when `device` > 0x1f or `function` > 7 (5 and 3 bits on the bus).
    pub fn new(domain: u32, bus: u8, device: u8, function: u8) -> Option<PciAddress> {
        (device <= 0x1f && function <= 7).then_some(PciAddress {
            domain,
            bus,
            device,
            function,
        })
    }

    pub fn domain(&self) -> u32 {
        self.domain
    }

    pub fn bus(&self) -> u8 {
        self.bus
    }

    pub fn device(&self) -> u8 {
        self.device
    }

    pub fn function(&self) -> u8 {
        self.function
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl FromStr for PciAddress {
    type Err = Error;

    fn from_str(s: &str) -> Result<PciAddress, Error> {
        let bad = |why: &str| Error::BadPciAddress {
            text: s.to_string(),
            why: why.to_string(),
        };
        let hex = |part: &str, digits: std::ops::RangeInclusive<usize>, what: &str| {
            if !digits.contains(&part.len()) || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                let n = if digits.start() == digits.end() {
                    format!("{}", digits.start())
                } else {
                    format!("{} to {}", digits.start(), digits.end())
                };
                return Err(bad(&format!("the {what} must be {n} hex digits")));
            }
            u32::from_str_radix(part, 16).map_err(|_| bad(&format!("bad {what}")))
        };
        let mut colons = s.split(':');
        let (Some(domain), Some(bus), Some(dev_fn), None) =
            (colons.next(), colons.next(), colons.next(), colons.next())
        else {
            return Err(bad("expected two ':'"));
        };
        let Some((device, function)) = dev_fn.split_once('.') else {
            return Err(bad("expected a '.' before the function"));
        };
        // Domains are 16 bits on most hosts; Intel VMD domains have 5 digits (10000).
        let domain = hex(domain, 4..=8, "domain")?;
        let bus = hex(bus, 2..=2, "bus")? as u8;
        let device = hex(device, 2..=2, "device")? as u8;
        let function = hex(function, 1..=1, "function")? as u8;
        PciAddress::new(domain, bus, device, function)
            .ok_or_else(|| bad("the device must be at most 1f and the function at most 7"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_order() {
        let a: PciAddress = "0000:01:10.2".parse().unwrap();
        assert_eq!(
            (a.domain(), a.bus(), a.device(), a.function()),
            (0, 1, 0x10, 2)
        );
        assert_eq!(a.to_string(), "0000:01:10.2");
        let upper: PciAddress = "0000:AF:1F.7".parse().unwrap();
        assert_eq!(upper.to_string(), "0000:af:1f.7");
        let vmd: PciAddress = "10000:e1:00.0".parse().unwrap();
        assert_eq!(vmd.to_string(), "10000:e1:00.0");

        let mut v: Vec<PciAddress> = ["0000:01:10.2", "0000:01:00.0", "0000:01:10.0"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        v.sort();
        let s: Vec<String> = v.iter().map(|a| a.to_string()).collect();
        assert_eq!(s, ["0000:01:00.0", "0000:01:10.0", "0000:01:10.2"]);
    }

    #[test]
    fn bad_addresses() {
        for bad in [
            "",
            "01:10.2",
            "0000:01:10",
            "0000:01:10.8",
            "0000:01:20.0",
            "0000:1:10.2",
            "0000:01:10.2:0",
            "000:01:10.2",
            "0000:0g:10.2",
            "virtio0",
            "0000:01:10.+",
        ] {
            let e = bad.parse::<PciAddress>().unwrap_err().to_string();
            assert!(e.contains("e.g. \"0000:01:10.2\""), "{bad}: {e}");
        }
        let e = "0000:01:10.8"
            .parse::<PciAddress>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("function at most 7"), "{e}");
    }
}
