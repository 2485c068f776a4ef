//! Kernel modules for the guest. The cloud kernels build veth, nf_tables, NAT, conntrack and the
//! qdiscs as modules, so the guest gets every networking module (kernel/net/** and the virtual
//! devices in kernel/drivers/net/*.ko) plus whatever they depend on, decompressed (6.12 ships
//! .ko.xz and busybox insmod cannot read those), with a modules.dep made by the host's depmod.
//! The requested modules are insmod-ed at boot in dependency order; the rest are loaded on demand
//! by the kernel through /sbin/modprobe (busybox), e.g. nft_chain_nat for an nft NAT chain.

use super::kernel::Kernel;
use super::util;
use anyhow::{Context as _, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A staged module tree: `<root>/lib/modules/<release>/{kernel/..., modules.dep, ...}`.
pub struct Modules {
    pub root: PathBuf,
    release: String,
}

impl Modules {
    /// The directory that becomes /lib/modules/<release> in the guest.
    pub fn dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// Module paths (relative to `dir()`) to insmod for `names`, dependencies first.
    pub fn load_order(&self, names: &[String]) -> Result<Vec<String>> {
        let deps = parse_dep(&std::fs::read_to_string(self.dir().join("modules.dep"))?);
        let by_name: BTreeMap<String, &String> = deps.keys().map(|p| (mod_name(p), p)).collect();
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            let path = by_name.get(&normalize(name)).with_context(|| {
                format!("module `{name}` is neither built in nor in the staged module tree")
            })?;
            visit(path, &deps, &mut seen, &mut order);
        }
        Ok(order)
    }

    /// True if the kernel has `name` built in (so there is nothing to load).
    pub fn is_builtin(&self, name: &str) -> bool {
        let builtin = std::fs::read_to_string(self.dir().join("modules.builtin"));
        builtin.is_ok_and(|b| b.lines().any(|l| mod_name(l) == normalize(name)))
    }
}

/// modules.dep lists each module's full transitive closure; loading each listed dependency's own
/// dependencies first gives a valid order without trusting the list's internal order.
fn visit(
    path: &String,
    deps: &BTreeMap<String, Vec<String>>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) {
    if !seen.insert(path.clone()) {
        return;
    }
    for d in deps.get(path).into_iter().flatten() {
        visit(d, deps, seen, order);
    }
    order.push(path.clone());
}

/// Module name as the kernel sees it: file stem without .ko[.xz], dashes as underscores.
fn mod_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn parse_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.to_string(),
                d.split_whitespace().map(String::from).collect(),
            )
        })
        .collect()
}

/// Whether the guest should get this module before dependency closure.
fn wanted(path: &str) -> bool {
    let is_top_level_net_driver = path
        .strip_prefix("kernel/drivers/net/")
        .is_some_and(|rest| !rest.contains('/'));
    path.starts_with("kernel/net/") || is_top_level_net_driver
}

/// Stages (once per kernel package) the guest's module tree in the cache.
pub fn stage(kernel: &Kernel, cache: &Path) -> Result<Modules> {
    let root = cache.join("modules").join(&kernel.package);
    util::build_once(&root, |tmp| fill(kernel, tmp))?;
    Ok(Modules {
        root,
        release: kernel.release.clone(),
    })
}

fn fill(kernel: &Kernel, tmp: &Path) -> Result<()> {
    eprintln!("[vm] staging networking modules of {}", kernel.release);
    // The package ships no modules.dep (its postinst runs depmod): make one for the full tree
    // to learn the dependencies. depmod reads .ko.xz itself.
    let pkg_root = kernel
        .modules
        .ancestors()
        .nth(3)
        .context("odd modules path")?;
    depmod(pkg_root, &kernel.release)?;
    let deps = parse_dep(&std::fs::read_to_string(
        kernel.modules.join("modules.dep"),
    )?);
    let mut chosen = BTreeSet::new();
    for (m, d) in &deps {
        if wanted(m) {
            chosen.insert(m.clone());
            chosen.extend(d.iter().cloned());
        }
    }
    let dst = tmp.join("lib/modules").join(&kernel.release);
    for m in &chosen {
        let out = dst.join(m.strip_suffix(".xz").unwrap_or(m));
        std::fs::create_dir_all(out.parent().context("module path")?)?;
        let src = kernel.modules.join(m);
        if m.ends_with(".ko.xz") {
            let file = std::fs::File::create(&out)?;
            let status = Command::new("xz")
                .arg("-dc")
                .arg(&src)
                .stdout(file)
                .status()
                .context("cannot run xz (apt-get install xz-utils)")?;
            if !status.success() {
                bail!("xz -dc {} failed", src.display());
            }
        } else if m.ends_with(".ko") {
            std::fs::copy(&src, &out).with_context(|| format!("copy {}", src.display()))?;
        } else {
            bail!("unsupported module compression: {m}");
        }
    }
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        if kernel.modules.join(f).is_file() {
            std::fs::copy(kernel.modules.join(f), dst.join(f))?;
        }
    }
    depmod(tmp, &kernel.release)?;
    eprintln!("[vm] staged {} modules", chosen.len());
    Ok(())
}

fn depmod(base: &Path, release: &str) -> Result<()> {
    let depmod = util::which("depmod").context("depmod not found (apt-get install kmod)")?;
    util::run(Command::new(depmod).arg("-b").arg(base).arg(release))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_order() {
        assert_eq!(mod_name("kernel/net/ipv4/ip-tunnel.ko.xz"), "ip_tunnel");
        let deps = parse_dep("a.ko: b.ko c.ko\nb.ko: c.ko\nc.ko:\n");
        let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
        visit(&"a.ko".to_string(), &deps, &mut seen, &mut order);
        assert_eq!(order, ["c.ko", "b.ko", "a.ko"]);
        assert!(wanted("kernel/drivers/net/veth.ko.xz"));
        assert!(!wanted("kernel/drivers/net/vxlan/vxlan.ko"));
    }
}
