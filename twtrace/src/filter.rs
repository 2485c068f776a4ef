//! User-side event filters (--port, --ip). The --netns filter runs in the kernel.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;

use crate::{
    event::Record,
    kernel::netns::{self, NsFile},
};

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub ports: Vec<u16>,
    pub nets: Vec<IpNet>,
}

impl Filter {
    /// No --port and no --ip: everything passes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.nets.is_empty()
    }

    /// True when the record concerns one of the ports (local or remote) and one of the networks
    /// (local or remote address); an empty list matches everything.
    #[inline]
    pub fn matches(&self, r: &Record) -> bool {
        // It runs for every record: without filters (the usual case) two compares, inlined,
        // where the call alone cost several times that.
        self.is_empty() || self.matches_lists(r)
    }

    #[inline(never)]
    fn matches_lists(&self, r: &Record) -> bool {
        self.matches_endpoints(r.local, r.remote)
    }

    /// [`Filter::matches`] for a connection's two ends (a socket read from the kernel's
    /// tables, before it is a record).
    pub fn matches_endpoints(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        let port_ok = self.ports.is_empty()
            || self.ports.contains(&local.port())
            || self.ports.contains(&remote.port());
        let ip_ok = self.nets.is_empty()
            || (self.nets.iter()).any(|n| n.contains(&local.ip()) || n.contains(&remote.ip()));
        port_ok && ip_ok
    }
}

/// `--ip` values: an address (10.0.0.1, fd00::1) or a CIDR (10.0.0.0/8).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let net = IpNet::from_str(s)
        .or_else(|_| IpAddr::from_str(s).map(IpNet::from))
        .map_err(|_| {
            format!(
                "`{s}` is neither an IP address nor a CIDR (e.g. 10.0.0.1, 10.0.0.0/8, fd00::/64)"
            )
        })?;
    Ok(ipv4_of_mapped(net).unwrap_or(net))
}

/// `::ffff:10.0.0.0/104` as `10.0.0.0/8`: events show IPv4-mapped addresses as the IPv4
/// addresses they are (see `signals::endpoints`), so a filter written the way `ss` shows a
/// dual-stack socket's peer must match them too.
fn ipv4_of_mapped(net: IpNet) -> Option<IpNet> {
    let IpNet::V6(n) = net else { return None };
    let v4 = n.addr().to_ipv4_mapped()?;
    let prefix = n.prefix_len().checked_sub(96)?;
    ipnet::Ipv4Net::new(v4, prefix).ok().map(IpNet::V4)
}

/// A `--netns` value: the namespace's inode (what the kernel filters on) and, when it was
/// given as a file, that file (to enter the namespace by, for the start-up read: a namespace
/// file outside /proc and /run/netns is found nowhere else).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsArg {
    pub inode: u32,
    pub file: Option<PathBuf>,
}

/// `--netns` values: an inode number, bare or as `readlink /proc/PID/ns/net` prints it
/// (`net:[4026531840]`), a name under /run/netns (a name made of digits too: `ip netns add
/// 100`, which wins over the number), or a namespace file (/proc/PID/ns/net).
pub fn parse_netns(s: &str) -> Result<NetnsArg> {
    if s.is_empty() {
        bail!(
            "--netns is empty: give a namespace's inode number, a name under /run/netns, or a \
             file such as /proc/PID/ns/net"
        );
    }
    let named = (!s.contains('/') && !s.is_empty()).then(|| format!("/run/netns/{s}"));
    if let Some(path) = named
        .as_deref()
        .filter(|p| netns::is_namespace_file(Path::new(p)))
    {
        return by_file(s, path);
    }
    let number = s
        .strip_prefix("net:[")
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(n) = number.parse::<u32>() {
        if n == 0 {
            bail!("--netns 0 is not a namespace id");
        }
        return Ok(NetnsArg {
            inode: n,
            file: None,
        });
    }
    if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
        bail!("--netns {number}: too large for a namespace inode number (they are 32-bit)");
    }
    if s.starts_with('-') || s.starts_with("net:") {
        bail!(
            "--netns `{s}` is not a namespace: give its inode number (`net:[N]` or N), a name \
             under /run/netns, or a file such as /proc/PID/ns/net"
        );
    }
    by_file(s, named.as_deref().unwrap_or(s))
}

fn by_file(s: &str, path: &str) -> Result<NetnsArg> {
    let inode = match netns::inspect(Path::new(path))
        .with_context(|| format!("--netns `{s}`: not an inode number and {path} cannot be read"))?
    {
        NsFile::Network(inode) => inode,
        NsFile::NotNamespace => {
            bail!("--netns `{s}`: {path} is not a namespace file (such as /proc/PID/ns/net)")
        }
        NsFile::OtherNamespace => bail!(
            "--netns `{s}`: {path} is another kind of namespace, not a network namespace \
             (such as /proc/PID/ns/net)"
        ),
    };
    Ok(NetnsArg {
        inode: u32::try_from(inode).context("namespace inode does not fit in 32 bits")?,
        file: Some(PathBuf::from(path)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::What;

    fn rec(local: &str, remote: &str) -> Record {
        Record {
            ts_ns: 0,
            netns: 1,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            what: What::TwOverflow,
        }
    }

    #[test]
    fn port_and_cidr() {
        let f = Filter {
            ports: vec![80],
            nets: vec![parse_net("10.1.0.0/16").unwrap()],
        };
        assert!(f.matches(&rec("10.9.9.9:80", "10.1.2.3:5555")));
        assert!(!f.matches(&rec("10.9.9.9:81", "10.1.2.3:5555")));
        assert!(!f.matches(&rec("10.9.9.9:80", "10.2.2.3:5555")));
        assert!(Filter::default().matches(&rec("[::1]:1", "[::2]:2")));
    }

    #[test]
    fn bad_values_explain_themselves() {
        assert!(parse_net("10.0.0.300").unwrap_err().contains("CIDR"));
        assert_eq!(parse_net("fd00::1").unwrap().prefix_len(), 128);
        // IPv4-mapped, as `ss` shows a dual-stack socket's IPv4 peer: the IPv4 network.
        assert_eq!(
            parse_net("::ffff:10.0.0.7").unwrap().to_string(),
            "10.0.0.7/32"
        );
        assert_eq!(
            parse_net("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
        // Wider than the mapped range: left as written.
        assert_eq!(
            parse_net("::ffff:0:0/80").unwrap().to_string(),
            "::ffff:0.0.0.0/80"
        );
        assert!(parse_netns("0").is_err());
        assert!(
            parse_netns("no-such-ns-xyz")
                .unwrap_err()
                .to_string()
                .contains("/run/netns/")
        );
        let said = |s: &str| parse_netns(s).unwrap_err().to_string();
        let own = parse_netns("/proc/self/ns/net").unwrap();
        assert!(own.inode > 0);
        assert_eq!(own.file.as_deref(), Some(Path::new("/proc/self/ns/net")));
        // What readlink prints is accepted as it is.
        let printed = parse_netns(&format!("net:[{}]", own.inode)).unwrap();
        assert_eq!((printed.inode, printed.file), (own.inode, None));
        assert_eq!(parse_netns("4026531840").unwrap().inode, 4026531840);
        // An ordinary file has an inode too, but is no namespace.
        assert!(
            parse_netns("/proc/self/status")
                .unwrap_err()
                .to_string()
                .contains("not a namespace file")
        );
        // A namespace file of another kind names no network namespace.
        for other in ["/proc/self/ns/mnt", "/proc/self/ns/uts"] {
            assert!(
                said(other).contains("not a network namespace"),
                "{}",
                said(other)
            );
        }
        assert!(parse_netns("-1").is_err());
        assert!(parse_netns("net:[x]").is_err());
        assert!(said("").contains("--netns is empty"), "{}", said(""));
        for big in ["4294967296", "net:[4294967296]"] {
            assert!(said(big).contains("too large"), "{}", said(big));
        }
    }
}
