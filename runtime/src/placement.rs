//! Where a pool's threads run: the options (threads, cores, NUMA node,
//! pinning, spin), their environment overrides, and the choice of one CPU
//! per thread; plus the split of cores between serving instances.
//!
//! Policy: candidates are the CPUs this process may use (its affinity
//! mask), narrowed by `cores` and `numa_node`; SMT siblings are dropped so
//! there is one CPU per physical core. Without an explicit thread count the
//! pool takes every physical core of one NUMA node (the node with the most
//! candidates; the explicit node when given), so a default pool never spans
//! sockets. An explicit count fills that node first and spills to the next
//! nodes in order; more threads than physical cores reuse cores round-robin.

use crate::affinity;
use crate::topology::{Topology, format_cpu_list, parse_cpu_list};

/// Microseconds a waiting thread spins (yielding after the first 20) before
/// it parks: longer than the gaps between a model's parallel loops and
/// between back-to-back runs, short against a serving app's idle time.
pub const DEFAULT_SPIN: u32 = 200;

/// How to build a pool. `Default` is one pinned thread per physical core of
/// one NUMA node.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolOptions {
    /// Threads including the caller's; `None` = every physical core of one node.
    pub threads: Option<usize>,
    /// Candidate CPUs (`CPUCC_CORES`, `--cores`); `None` = the affinity mask.
    pub cores: Option<Vec<usize>>,
    /// Keep to this NUMA node's CPUs (`CPUCC_NUMA_NODE`, `--numa-node`).
    pub numa_node: Option<usize>,
    /// Pin each thread to its core (`false`: plain threads, for comparison).
    pub pin: bool,
    /// Microseconds a waiting thread spins before parking (`CPUCC_SPIN`,
    /// `--spin`).
    pub spin: u32,
    /// Chunk records kept per thread for tracing (0 = no tracing).
    pub trace_capacity: usize,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            threads: None,
            cores: None,
            numa_node: None,
            pin: true,
            spin: DEFAULT_SPIN,
            trace_capacity: 0,
        }
    }
}

fn env_num<T: std::str::FromStr>(var: &str) -> Result<Option<T>, String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{var}={v:?} is not a number")),
        _ => Ok(None),
    }
}

impl PoolOptions {
    /// Fills the fields still unset from `CPUCC_NUM_THREADS`, `CPUCC_CORES`,
    /// `CPUCC_NUMA_NODE` and `CPUCC_SPIN` (explicit settings win).
    pub fn with_env(mut self) -> Result<Self, String> {
        if self.threads.is_none() {
            self.threads = env_num::<usize>("CPUCC_NUM_THREADS")?.filter(|&t| t > 0);
        }
        if self.cores.is_none()
            && let Ok(v) = std::env::var("CPUCC_CORES")
            && !v.trim().is_empty()
        {
            self.cores = Some(
                parse_cpu_list(&v).ok_or_else(|| format!("CPUCC_CORES={v:?} is not a CPU list"))?,
            );
        }
        if self.numa_node.is_none() {
            self.numa_node = env_num("CPUCC_NUMA_NODE")?;
        }
        if self.spin == DEFAULT_SPIN
            && let Some(s) = env_num("CPUCC_SPIN")?
        {
            self.spin = s;
        }
        Ok(self)
    }
}

/// The physical cores the options allow, in placement order (one node's
/// cores before the next).
pub fn candidate_cores(topo: &Topology, opts: &PoolOptions) -> Result<Vec<usize>, String> {
    let allowed = affinity::current().map_err(|e| format!("sched_getaffinity: {e}"))?;
    candidates_within(topo, &allowed, opts)
}

fn candidates_within(
    topo: &Topology,
    allowed: &[usize],
    opts: &PoolOptions,
) -> Result<Vec<usize>, String> {
    let mut cpus = match &opts.cores {
        Some(list) => {
            if let Some(bad) = list.iter().find(|c| !allowed.contains(c)) {
                return Err(format!(
                    "CPU {bad} is not among the CPUs this process may use ({})",
                    format_cpu_list(allowed)
                ));
            }
            list.clone()
        }
        None => allowed.to_vec(),
    };
    if let Some(node) = opts.numa_node {
        cpus.retain(|&c| topo.node_of(c) == node);
        if cpus.is_empty() {
            return Err(format!("NUMA node {node} has none of the usable CPUs"));
        }
    }
    if cpus.is_empty() {
        return Err("no usable CPUs".to_string());
    }
    let mut cores = topo.physical_cores(&cpus);
    // The node with the most cores (the first on ties).
    let mut counts = std::collections::BTreeMap::new();
    for &c in &cores {
        *counts.entry(topo.node_of(c)).or_insert(0usize) += 1;
    }
    let best = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map_or(0, |(&n, _)| n);
    if opts.threads.is_none() {
        cores.retain(|&c| topo.node_of(c) == best);
    } else {
        // Stable: node order and CPU order otherwise kept.
        cores.sort_by_key(|&c| topo.node_of(c) != best);
    }
    Ok(cores)
}

/// One CPU per thread (index 0 = the caller's), by the module's policy.
pub fn plan(topo: &Topology, opts: &PoolOptions) -> Result<Vec<usize>, String> {
    let allowed = affinity::current().map_err(|e| format!("sched_getaffinity: {e}"))?;
    plan_within(topo, &allowed, opts)
}

fn plan_within(
    topo: &Topology,
    allowed: &[usize],
    opts: &PoolOptions,
) -> Result<Vec<usize>, String> {
    let cores = candidates_within(topo, allowed, opts)?;
    let threads = opts.threads.unwrap_or(cores.len());
    Ok((0..threads).map(|i| cores[i % cores.len()]).collect())
}

/// Splits `cores` into `k` disjoint instances of `per` cores each, in
/// order (so instances stay within a node when the list is node-ordered).
pub fn partition(cores: &[usize], k: usize, per: usize) -> Result<Vec<Vec<usize>>, String> {
    if k == 0 || per == 0 {
        return Err("instances and threads per instance must be at least 1".to_string());
    }
    if k * per > cores.len() {
        return Err(format!(
            "{k} instances x {per} threads need {} physical cores; {} available ({})",
            k * per,
            cores.len(),
            format_cpu_list(cores)
        ));
    }
    Ok(cores[..k * per]
        .chunks(per)
        .map(<[usize]>::to_vec)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{CoreKey, Cpu};

    /// 2 nodes x 3 cores x 2 threads: node 0 = CPUs 0-2 + siblings 6-8,
    /// node 1 = CPUs 3-5 + siblings 9-11.
    fn two_nodes() -> Topology {
        Topology {
            cpus: (0..12)
                .map(|id| Cpu {
                    id,
                    core: CoreKey::Siblings(id % 6),
                    node: usize::from(id % 6 >= 3),
                })
                .collect(),
        }
    }

    fn opts(threads: Option<usize>) -> PoolOptions {
        PoolOptions {
            threads,
            ..PoolOptions::default()
        }
    }

    #[test]
    fn default_pool_is_one_node_of_physical_cores() {
        let t = two_nodes();
        let all: Vec<usize> = (0..12).collect();
        assert_eq!(plan_within(&t, &all, &opts(None)).unwrap(), vec![0, 1, 2]);
        // Under taskset 1,3-5,7,9: node 1 has more cores (7 is 1's sibling).
        let some = [1, 3, 4, 5, 7, 9];
        assert_eq!(plan_within(&t, &some, &opts(None)).unwrap(), vec![3, 4, 5]);
        // A tie goes to the first node: 2,6,7 are three cores of node 0.
        let tie: Vec<usize> = (2..12).collect();
        assert_eq!(plan_within(&t, &tie, &opts(None)).unwrap(), vec![2, 6, 7]);
    }

    #[test]
    fn explicit_counts_fill_a_node_then_spill_then_wrap() {
        let t = two_nodes();
        let all: Vec<usize> = (0..12).collect();
        assert_eq!(plan_within(&t, &all, &opts(Some(2))).unwrap(), vec![0, 1]);
        assert_eq!(
            plan_within(&t, &all, &opts(Some(5))).unwrap(),
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(
            plan_within(&t, &all, &opts(Some(8))).unwrap(),
            vec![0, 1, 2, 3, 4, 5, 0, 1]
        );
    }

    #[test]
    fn cores_and_node_restrict_the_choice() {
        let t = two_nodes();
        let all: Vec<usize> = (0..12).collect();
        let o = PoolOptions {
            numa_node: Some(1),
            ..opts(None)
        };
        assert_eq!(plan_within(&t, &all, &o).unwrap(), vec![3, 4, 5]);
        let o = PoolOptions {
            cores: Some(vec![6, 0, 7]),
            ..opts(None)
        };
        // 6 is 0's sibling: two physical cores.
        assert_eq!(plan_within(&t, &all, &o).unwrap(), vec![0, 7]);
        let o = PoolOptions {
            cores: Some(vec![1]),
            ..opts(None)
        };
        let e = plan_within(&t, &[0], &o).unwrap_err();
        assert!(e.contains("CPU 1 is not among"), "{e}");
        let o = PoolOptions {
            numa_node: Some(1),
            ..opts(None)
        };
        assert!(plan_within(&t, &[0, 1], &o).is_err());
    }

    #[test]
    fn instances_are_disjoint() {
        let cores = [0, 1, 2, 3, 4, 5];
        let parts = partition(&cores, 3, 2).unwrap();
        assert_eq!(parts, vec![vec![0, 1], vec![2, 3], vec![4, 5]]);
        let parts = partition(&cores, 2, 2).unwrap();
        assert_eq!(parts, vec![vec![0, 1], vec![2, 3]]);
        let e = partition(&cores, 4, 2).unwrap_err();
        assert!(e.contains("need 8 physical cores"), "{e}");
        assert!(partition(&cores, 0, 1).is_err());
    }
}
