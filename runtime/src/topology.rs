//! CPU topology from sysfs: which logical CPUs share a physical core (SMT
//! siblings) and which NUMA node each CPU belongs to.
//!
//! Read from `/sys/devices/system/cpu/cpuN/topology/thread_siblings_list`
//! (falling back to `physical_package_id` + `core_id`) and
//! `/sys/devices/system/node/nodeN/cpulist`. Missing files degrade cleanly:
//! without core information every CPU counts as its own core, without node
//! information every CPU is on node 0.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// One logical CPU.
#[derive(Clone, Debug, PartialEq)]
pub struct Cpu {
    pub id: usize,
    /// Identifies the physical core: CPUs with equal keys are SMT siblings.
    pub core: CoreKey,
    pub node: usize,
}

/// How a CPU's physical core is known.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CoreKey {
    /// The lowest CPU of `thread_siblings_list`.
    Siblings(usize),
    /// `(physical_package_id, core_id)`.
    PackageCore(usize, usize),
    /// No topology: the CPU itself.
    Alone(usize),
}

/// The machine's logical CPUs, sorted by id.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    pub cpus: Vec<Cpu>,
}

/// Parses a kernel CPU list such as `0-3,8-11` or `5`. Whitespace around
/// the list is ignored; an empty list is empty.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let s = s.trim();
    let mut out = Vec::new();
    if s.is_empty() {
        return Some(out);
    }
    for part in s.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b || b - a > 1 << 16 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// Formats CPUs as a kernel CPU list (`0-3,8`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            sorted[i].to_string()
        } else {
            format!("{}-{}", sorted[i], sorted[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

fn numbered(dir: &Path, prefix: &str) -> Vec<(usize, std::path::PathBuf)> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(|n| n.parse::<usize>().ok())
            {
                out.push((n, e.path()));
            }
        }
    }
    out.sort();
    out
}

impl Topology {
    /// This machine's topology.
    pub fn host() -> Topology {
        Topology::read_from(Path::new("/sys/devices/system"))
    }

    /// Reads a sysfs tree rooted at `root` (normally `/sys/devices/system`).
    pub fn read_from(root: &Path) -> Topology {
        let mut node_of = BTreeMap::new();
        for (node, path) in numbered(&root.join("node"), "node") {
            let list = fs::read_to_string(path.join("cpulist")).ok();
            for cpu in list.and_then(|l| parse_cpu_list(&l)).unwrap_or_default() {
                node_of.insert(cpu, node);
            }
        }
        let cpus = numbered(&root.join("cpu"), "cpu")
            .into_iter()
            .map(|(id, path)| {
                let topo = path.join("topology");
                let read = |f: &str| fs::read_to_string(topo.join(f)).ok();
                let num = |f: &str| read(f).and_then(|s| s.trim().parse::<usize>().ok());
                let siblings = read("thread_siblings_list")
                    .and_then(|l| parse_cpu_list(&l))
                    .and_then(|l| l.into_iter().min());
                let core = match (siblings, num("physical_package_id"), num("core_id")) {
                    (Some(first), _, _) => CoreKey::Siblings(first),
                    (None, Some(p), Some(c)) => CoreKey::PackageCore(p, c),
                    _ => CoreKey::Alone(id),
                };
                Cpu {
                    id,
                    core,
                    node: node_of.get(&id).copied().unwrap_or(0),
                }
            })
            .collect();
        Topology { cpus }
    }

    fn cpu(&self, id: usize) -> Option<&Cpu> {
        self.cpus
            .binary_search_by_key(&id, |c| c.id)
            .ok()
            .map(|i| &self.cpus[i])
    }

    /// The NUMA node of `cpu` (0 when unknown).
    pub fn node_of(&self, cpu: usize) -> usize {
        self.cpu(cpu).map_or(0, |c| c.node)
    }

    /// One CPU per physical core among `allowed`: the lowest allowed SMT
    /// sibling of each core, grouped by NUMA node (nodes in order, CPUs
    /// ascending within a node). CPUs sysfs does not list count as cores of
    /// their own on node 0.
    pub fn physical_cores(&self, allowed: &[usize]) -> Vec<usize> {
        let mut allowed = allowed.to_vec();
        allowed.sort_unstable();
        allowed.dedup();
        let mut seen = BTreeSet::new();
        let mut picked = Vec::new();
        for cpu in allowed {
            let (key, node) = match self.cpu(cpu) {
                Some(c) => (c.core.clone(), c.node),
                None => (CoreKey::Alone(cpu), 0),
            };
            if seen.insert(key) {
                picked.push((node, cpu));
            }
        }
        picked.sort_unstable();
        picked.into_iter().map(|(_, cpu)| cpu).collect()
    }
}

/// The CPU's model name (`/proc/cpuinfo`), or "unknown".
pub fn cpu_model() -> String {
    let info = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    for key in ["model name", "Processor", "cpu model"] {
        if let Some(v) = info.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        }) {
            return v;
        }
    }
    // aarch64 kernels print only ids: implementer and part.
    let field = |k: &str| {
        info.lines().find_map(|l| {
            let (key, v) = l.split_once(':')?;
            (key.trim() == k).then(|| v.trim().to_string())
        })
    };
    match (field("CPU implementer"), field("CPU part")) {
        (Some(i), Some(p)) => format!("implementer {i} part {p}"),
        _ => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(
            parse_cpu_list("0-3,8-9,12\n"),
            Some(vec![0, 1, 2, 3, 8, 9, 12])
        );
        assert_eq!(parse_cpu_list(" 5 "), Some(vec![5]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(parse_cpu_list("1,,2"), None);
        assert_eq!(format_cpu_list(&[9, 0, 1, 2, 3, 8, 12]), "0-3,8-9,12");
        assert_eq!(format_cpu_list(&[]), "");
    }

    /// A fake sysfs tree. `cpus`: (id, package, core_id, siblings list).
    fn fixture(
        name: &str,
        cpus: &[(usize, usize, usize, &str)],
        nodes: &[&str],
        with_siblings: bool,
    ) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("cpucc-topology-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for &(id, pkg, core, sib) in cpus {
            let t = root.join(format!("cpu/cpu{id}/topology"));
            fs::create_dir_all(&t).unwrap();
            fs::write(t.join("physical_package_id"), format!("{pkg}\n")).unwrap();
            fs::write(t.join("core_id"), format!("{core}\n")).unwrap();
            if with_siblings {
                fs::write(t.join("thread_siblings_list"), format!("{sib}\n")).unwrap();
            }
        }
        // Entries that are not CPUs must be ignored.
        fs::create_dir_all(root.join("cpu/cpufreq")).unwrap();
        fs::write(root.join("cpu/online"), "0-7\n").unwrap();
        for (n, list) in nodes.iter().enumerate() {
            let d = root.join(format!("node/node{n}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("cpulist"), format!("{list}\n")).unwrap();
        }
        root
    }

    /// 2 sockets x 2 cores x 2 threads, Intel numbering: CPUs 0-3 are the
    /// first threads, 4-7 their siblings (4 is 0's sibling, ...).
    const TWO_SOCKET_SMT: [(usize, usize, usize, &str); 8] = [
        (0, 0, 0, "0,4"),
        (1, 0, 1, "1,5"),
        (2, 1, 0, "2,6"),
        (3, 1, 1, "3,7"),
        (4, 0, 0, "0,4"),
        (5, 0, 1, "1,5"),
        (6, 1, 0, "2,6"),
        (7, 1, 1, "3,7"),
    ];

    #[test]
    fn smt_siblings_are_skipped_and_nodes_grouped() {
        for with_siblings in [true, false] {
            let root = fixture(
                &format!("smt{with_siblings}"),
                &TWO_SOCKET_SMT,
                &["0-1,4-5", "2-3,6-7"],
                with_siblings,
            );
            let t = Topology::read_from(&root);
            assert_eq!(t.cpus.len(), 8);
            let all: Vec<usize> = (0..8).collect();
            assert_eq!(t.physical_cores(&all), vec![0, 1, 2, 3]);
            // Only second threads allowed (taskset 4-7): they are the cores.
            assert_eq!(t.physical_cores(&[4, 5, 6, 7]), vec![4, 5, 6, 7]);
            // Both threads of core 0 and one of core 3: two cores.
            assert_eq!(t.physical_cores(&[7, 4, 0]), vec![0, 7]);
            // Node order first: node 1's CPU 6 after node 0's 5.
            assert_eq!(t.physical_cores(&[6, 5]), vec![5, 6]);
            assert_eq!(t.node_of(6), 1);
            assert_eq!(t.node_of(5), 0);
            fs::remove_dir_all(&root).unwrap();
        }
    }

    #[test]
    fn package_and_core_ids_distinguish_sockets() {
        // Without sibling lists, core_id 0 on both sockets is two cores.
        let root = fixture("pkg", &TWO_SOCKET_SMT[..4], &[], false);
        let t = Topology::read_from(&root);
        assert_eq!(t.physical_cores(&[0, 1, 2, 3]), vec![0, 1, 2, 3]);
        assert_eq!(t.node_of(3), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn missing_sysfs_means_every_cpu_is_a_core() {
        let t = Topology::read_from(Path::new("/nonexistent/cpucc"));
        assert!(t.cpus.is_empty());
        assert_eq!(t.physical_cores(&[3, 1, 2]), vec![1, 2, 3]);
        assert_eq!(t.node_of(1), 0);
    }
}
