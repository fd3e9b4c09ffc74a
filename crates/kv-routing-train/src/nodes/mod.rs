//! Data-parallel training across processes ("nodes"), on this machine or several, over TCP.
//!
//! # Contract
//! - **The same step as one node.** A run on N nodes with the global batch B trains exactly the
//!   optimizer steps of one node with the batch B: node r reads the r-th N-th of each step's
//!   sequences ([`crate::learner::StepLayout`]), each node divides its loss by the targets of the
//!   whole step, and before clipping every optimizer step replaces each node's gradients by
//!   their sum over the nodes ([`NodeGroup::all_reduce_gradients`]), so every node applies the
//!   same update to the same weights. Routes are a function of the seed and the step, so every
//!   node draws the same one. Only the order of the floating-point sums differs from one node.
//! - **A star around rank 0.** Rank 0, the coordinator, listens at the coordinator address;
//!   every other node connects to it. Each sum is taken on rank 0 in rank order and sent back
//!   whole, so every node holds the same bits, and a rerun the same bits again. A star moves
//!   `2 (N - 1)` gradients through rank 0 per step (a ring would move 2 per node): the right
//!   trade for a few nodes, the first thing to change for many.
//! - **Agreement first.** Joining compares each node's [`RunFingerprint`] (every setting of the
//!   run but machine-local paths, the step it starts at, digests of its starting weights and
//!   data) with rank 0's; the first difference refuses the node by name and stops the run on
//!   every node. Every exchange carries its step and buffer index and is checked again.
//! - **No hang.** Every read and write waits at most the configured timeout, joining included;
//!   a peer that dies is seen at once (its connection closes). The first failure aborts: the
//!   node tells the others why (best effort) and closes its connections, so every node stops
//!   with an error naming the cause, at its next exchange at the latest.
//! - Only rank 0 writes the run's log and checkpoints (the trainer's rule); any node count,
//!   one included, resumes a checkpoint, since a step does not depend on the node count.
//!
//! Why not `burn-collective`: its 0.21.0 global all-reduce hangs on the second call (see
//! docs/training.md, "Several nodes"), and nothing in it times out.

mod fingerprint;
mod gradients;
mod wire;

use std::io::{self, BufReader, BufWriter, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use fingerprint::{tokens_digest, weights_digest, RunFingerprint};

use crate::error::{Result, TrainError};
use wire::{Combine, Incoming, Values};

/// How long a node waits for the others, by default: joining, and any single exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where this process stands in a run on several nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// How many nodes train the run (at least 1).
    pub nodes: usize,
    /// This node's rank, `0..nodes`; rank 0 coordinates and writes the run's files.
    pub rank: usize,
    /// `host:port` where rank 0 listens and the others connect.
    pub coordinator: String,
    /// The longest wait for another node: to join, and for any one exchange.
    pub timeout: Duration,
}

impl NodeConfig {
    /// Checks the ranks and the timeout.
    pub fn validate(&self) -> Result<()> {
        if self.nodes == 0 {
            return Err(TrainError::Config("a run needs at least one node".into()));
        }
        if self.rank >= self.nodes {
            return Err(TrainError::Config(format!(
                "node rank {} is not below the node count {}",
                self.rank, self.nodes
            )));
        }
        if self.timeout.is_zero() {
            return Err(TrainError::Config(
                "the node timeout must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// The connections of one node to the others.
enum Links {
    /// Rank 0: one link per other node, in rank order.
    Coordinator(Vec<Link>),
    /// Any other rank: its link to rank 0.
    Member(Link),
}

struct Link {
    /// The rank at the other end.
    rank: usize,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Link {
    fn new(rank: usize, stream: TcpStream, timeout: Duration) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self {
            rank,
            reader: BufReader::with_capacity(1 << 16, stream.try_clone()?),
            writer: BufWriter::with_capacity(1 << 16, stream),
        })
    }
}

struct GroupState {
    links: Option<Links>,
    /// Why the group stopped, once it has.
    failure: Option<String>,
    /// The step of the next gradient exchange.
    step: u64,
    /// Wall-clock seconds spent in exchanges (sending, waiting, summing, receiving).
    exchange_seconds: f64,
}

/// This node's membership of a run on several nodes (see the module docs).
pub struct NodeGroup {
    rank: usize,
    nodes: usize,
    timeout: Duration,
    state: Mutex<GroupState>,
}

impl std::fmt::Debug for NodeGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeGroup")
            .field("rank", &self.rank)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl NodeGroup {
    /// Joins the run of `config.nodes` nodes whose next step is `first_step`: rank 0 waits for
    /// every other node to connect and compares their fingerprints with `fingerprint`; the
    /// others connect (retrying until rank 0 listens) and wait to be admitted. Returns once
    /// every node has joined; an error when one does not within the timeout, or differs.
    pub fn join(
        config: &NodeConfig,
        first_step: u64,
        fingerprint: &RunFingerprint,
    ) -> Result<Self> {
        config.validate()?;
        let links = match config.rank {
            0 => Links::Coordinator(admit_members(config, fingerprint)?),
            _ => Links::Member(join_coordinator(config, fingerprint)?),
        };
        Ok(Self {
            rank: config.rank,
            nodes: config.nodes,
            timeout: config.timeout,
            state: Mutex::new(GroupState {
                links: Some(links),
                failure: None,
                step: first_step,
                exchange_seconds: 0.0,
            }),
        })
    }

    /// This node's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// How many nodes train the run.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Wall-clock seconds this node has spent exchanging with the others so far: sending,
    /// waiting for the slowest node, summing, receiving.
    pub fn exchange_seconds(&self) -> f64 {
        self.lock().exchange_seconds
    }

    /// Waits until every node reaches this point (rank 0 after its last checkpoint, the others
    /// after their last step), so that a node that returns knows the run ended everywhere.
    pub fn barrier(&self) -> Result<()> {
        let mut state = self.lock();
        let step = state.step;
        self.sum_locked(&mut state, step, u64::MAX, Values::Absent)
            .map(drop)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sums `values` over the nodes as buffer `index` of the exchange of `step`; on the first
    /// failure tells the others, closes every link and keeps failing.
    fn sum_locked(
        &self,
        state: &mut GroupState,
        step: u64,
        index: u64,
        values: Values,
    ) -> Result<Values> {
        if let Some(failure) = &state.failure {
            return Err(TrainError::Node(format!("stopped earlier: {failure}")));
        }
        let started = Instant::now();
        let links = state.links.as_mut().expect("links live until a failure");
        let result = match links {
            Links::Coordinator(members) => {
                sum_on_coordinator(members, step, index, values, self.timeout)
            }
            Links::Member(link) => sum_through_coordinator(link, step, index, values, self.timeout),
        };
        state.exchange_seconds += started.elapsed().as_secs_f64();
        result.map_err(|failure| {
            if let Some(links) = state.links.take() {
                abort(links, &failure);
            }
            state.failure = Some(failure.clone());
            TrainError::Node(failure)
        })
    }
}

/// Tells every linked node why this one stops (best effort: a peer may be gone), then closes.
fn abort(links: Links, reason: &str) {
    let reason = format!("node stopped the run: {reason}");
    let mut tell = |link: &mut Link| {
        let _ = wire::write_abort(&mut link.writer, &reason).and_then(|()| link.writer.flush());
    };
    match links {
        Links::Coordinator(mut members) => members.iter_mut().for_each(&mut tell),
        Links::Member(mut link) => tell(&mut link),
    }
}

/// What an I/O failure on the link to `rank` means, in words.
fn link_failure(rank: usize, step: u64, timeout: Duration, error: io::Error) -> String {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
            "no word from node {rank} for {} s at step {step} (--node-timeout)",
            timeout.as_secs_f64()
        ),
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => {
            format!("node {rank} closed its connection at step {step}: it stopped or died")
        }
        _ => format!("the link to node {rank} failed at step {step}: {error}"),
    }
}

/// Reads the header of the next message from `link`, which must match `own`.
fn read_matching_header(
    link: &mut Link,
    step: u64,
    index: u64,
    own: &Values,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let rank = link.rank;
    match wire::read_header(&mut link.reader).map_err(|e| link_failure(rank, step, timeout, e))? {
        Incoming::Abort(reason) => Err(format!("node {rank} reports: {reason}")),
        Incoming::Values(header) if (header.exchange, header.index) != (step, index) => Err(format!(
            "node {rank} sent buffer {} of step {} where buffer {index} of step {step} was due: the nodes are not running the same steps",
            header.index, header.exchange
        )),
        Incoming::Values(header) if !header.matches(own) => Err(format!(
            "node {rank} sent {} for buffer {index} of step {step}, node {} holds {}: the nodes' models or routes differ",
            header.describe(),
            if rank == 0 { "here" } else { "0" },
            own.describe()
        )),
        Incoming::Values(_) => Ok(()),
    }
}

fn sum_on_coordinator(
    members: &mut [Link],
    step: u64,
    index: u64,
    mut sum: Values,
    timeout: Duration,
) -> std::result::Result<Values, String> {
    // In rank order: the same sum, bit for bit, every time.
    for link in members.iter_mut() {
        read_matching_header(link, step, index, &sum, timeout)?;
        wire::read_values(&mut link.reader, &mut sum, Combine::Add)
            .map_err(|e| link_failure(link.rank, step, timeout, e))?;
    }
    for link in members.iter_mut() {
        wire::write_values(&mut link.writer, step, index, &sum)
            .and_then(|()| link.writer.flush())
            .map_err(|e| link_failure(link.rank, step, timeout, e))?;
    }
    Ok(sum)
}

fn sum_through_coordinator(
    link: &mut Link,
    step: u64,
    index: u64,
    mut values: Values,
    timeout: Duration,
) -> std::result::Result<Values, String> {
    wire::write_values(&mut link.writer, step, index, &values)
        .and_then(|()| link.writer.flush())
        .map_err(|e| link_failure(0, step, timeout, e))?;
    read_matching_header(link, step, index, &values, timeout)?;
    wire::read_values(&mut link.reader, &mut values, Combine::Replace)
        .map_err(|e| link_failure(0, step, timeout, e))?;
    Ok(values)
}

/// Rank 0: listens, admits every other rank once, refuses a node that differs.
fn admit_members(config: &NodeConfig, fingerprint: &RunFingerprint) -> Result<Vec<Link>> {
    let mut members: Vec<Option<Link>> = (1..config.nodes).map(|_| None).collect();
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let listener = TcpListener::bind(&config.coordinator).map_err(|e| {
        TrainError::Node(format!(
            "node 0 cannot listen at {} (--coordinator): {e}",
            config.coordinator
        ))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| TrainError::Node(format!("node 0 cannot poll its listener: {e}")))?;
    let deadline = Instant::now() + config.timeout;
    while members.iter().any(Option::is_none) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = members
                        .iter()
                        .enumerate()
                        .filter(|(_, m)| m.is_none())
                        .map(|(i, _)| (i + 1).to_string())
                        .collect();
                    return Err(TrainError::Node(format!(
                        "node(s) {} did not join within {} s (--node-timeout)",
                        missing.join(", "),
                        config.timeout.as_secs_f64()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                return Err(TrainError::Node(format!(
                    "node 0 cannot accept a node: {e}"
                )))
            }
        };
        // A connection that is not one of ours (no or a foreign hello) is dropped and the wait
        // goes on; one of ours that differs stops the run.
        let Some((rank, mut link, theirs, nodes)) = read_hello(stream, config.timeout) else {
            continue;
        };
        let refusal = if nodes != config.nodes {
            Some(format!(
                "node {rank} was told of {nodes} nodes, node 0 of {}",
                config.nodes
            ))
        } else if rank == 0 || rank >= config.nodes {
            Some(format!("node rank {rank} is not in 1..{}", config.nodes))
        } else if members[rank - 1].is_some() {
            Some(format!("two nodes joined as rank {rank}"))
        } else {
            fingerprint.first_difference(&theirs, rank)
        };
        if let Some(reason) = refusal {
            let _ = answer(&mut link, Some(&reason));
            // The nodes admitted so far wait for their answer: the run is off for them too.
            for mut joined in members.into_iter().flatten() {
                let _ = answer(
                    &mut joined,
                    Some(&format!("another node was refused: {reason}")),
                );
            }
            return Err(TrainError::Node(format!("refused a node: {reason}")));
        }
        members[rank - 1] = Some(link);
    }
    let mut members: Vec<Link> = members.into_iter().flatten().collect();
    for link in &mut members {
        answer(link, None)
            .map_err(|e| link_failure(link.rank, 0, config.timeout, e))
            .map_err(TrainError::Node)?;
    }
    Ok(members)
}

/// A joining node's hello: its rank, its link, its fingerprint and the node count it was told.
fn read_hello(
    stream: TcpStream,
    timeout: Duration,
) -> Option<(usize, Link, RunFingerprint, usize)> {
    stream.set_nonblocking(false).ok()?;
    let mut link = Link::new(usize::MAX, stream, timeout).ok()?;
    let mut magic = [0; 8];
    io::Read::read_exact(&mut link.reader, &mut magic).ok()?;
    if magic != wire::MAGIC {
        return None;
    }
    let rank = usize::try_from(wire::read_u64(&mut link.reader).ok()?).ok()?;
    let nodes = usize::try_from(wire::read_u64(&mut link.reader).ok()?).ok()?;
    let fingerprint = RunFingerprint::from_json(&wire::read_text(&mut link.reader).ok()?)?;
    link.rank = rank;
    Some((rank, link, fingerprint, nodes))
}

/// Admits (`None`) or refuses a node.
fn answer(link: &mut Link, refusal: Option<&str>) -> io::Result<()> {
    wire::write_u64(&mut link.writer, u64::from(refusal.is_some()))?;
    wire::write_text(&mut link.writer, refusal.unwrap_or(""))?;
    link.writer.flush()
}

/// Any rank but 0: connects to the coordinator (retrying while it is not listening yet),
/// introduces itself, and waits to be admitted.
fn join_coordinator(config: &NodeConfig, fingerprint: &RunFingerprint) -> Result<Link> {
    let deadline = Instant::now() + config.timeout;
    let unreachable = |detail: String| {
        TrainError::Node(format!(
            "node {} cannot reach the coordinator at {} within {} s (--coordinator, --node-timeout): {detail}",
            config.rank,
            config.coordinator,
            config.timeout.as_secs_f64()
        ))
    };
    let stream = loop {
        // Every address the name resolves to (`localhost` may give ::1 before 127.0.0.1).
        let attempt = config.coordinator.to_socket_addrs().and_then(|addresses| {
            let mut last =
                io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
            for address in addresses {
                let left = deadline.saturating_duration_since(Instant::now());
                match TcpStream::connect_timeout(&address, left.max(Duration::from_millis(1))) {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = e,
                }
            }
            Err(last)
        });
        match attempt {
            Ok(stream) => break stream,
            Err(e) if Instant::now() >= deadline => return Err(unreachable(e.to_string())),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let failed = |e: io::Error| TrainError::Node(link_failure(0, 0, config.timeout, e));
    let mut link = Link::new(0, stream, config.timeout).map_err(failed)?;
    let hello = (|| {
        link.writer.write_all(&wire::MAGIC)?;
        wire::write_u64(&mut link.writer, config.rank as u64)?;
        wire::write_u64(&mut link.writer, config.nodes as u64)?;
        wire::write_text(&mut link.writer, &fingerprint.to_json())?;
        link.writer.flush()
    })();
    hello.map_err(failed)?;
    // Rank 0 answers once every node has joined, which may take up to its own timeout after
    // this node connected; it closes the link if it gives up.
    let stream = link.reader.get_ref();
    stream
        .set_read_timeout(Some(config.timeout * 2))
        .map_err(failed)?;
    let code = wire::read_u64(&mut link.reader).map_err(failed)?;
    let reason = wire::read_text(&mut link.reader).map_err(failed)?;
    link.reader
        .get_ref()
        .set_read_timeout(Some(config.timeout))
        .map_err(failed)?;
    if code != 0 {
        return Err(TrainError::Node(format!(
            "node 0 refused node {}: {reason}",
            config.rank
        )));
    }
    Ok(link)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// Tests that open a group run one at a time: a port found free is released before node 0
    /// binds it, and two tests in parallel were handed the same one (one test's nodes then
    /// joined the other's coordinator, and its own node 0 could not listen).
    fn one_group_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        static GROUPS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        GROUPS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn configs(nodes: usize, timeout: Duration) -> Vec<NodeConfig> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        (0..nodes)
            .map(|rank| NodeConfig {
                nodes,
                rank,
                coordinator: format!("127.0.0.1:{port}"),
                timeout,
            })
            .collect()
    }

    /// Runs `body(rank, group)` on each of `nodes` joined nodes, in threads; results by rank.
    fn on_nodes<T: Send + 'static>(
        nodes: usize,
        body: impl Fn(usize, NodeGroup) -> T + Send + Sync + Copy + 'static,
    ) -> Vec<T> {
        let handles: Vec<_> = configs(nodes, Duration::from_secs(10))
            .into_iter()
            .map(|config| {
                thread::spawn(move || {
                    let group = NodeGroup::join(&config, 5, &RunFingerprint::default()).unwrap();
                    body(config.rank, group)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn sum(group: &NodeGroup, index: u64, values: Values) -> Result<Values> {
        let mut state = group.lock();
        let step = state.step;
        group.sum_locked(&mut state, step, index, values)
    }

    #[test]
    fn every_node_receives_the_same_sum_in_rank_order() {
        let _serial = one_group_at_a_time();
        let sums = on_nodes(3, |rank, group| {
            let own: Vec<f32> = (0..40_000)
                .map(|i| (i as f32).sin() * (rank + 1) as f32)
                .collect();
            let f32_sum = sum(&group, 0, Values::F32(own)).unwrap();
            let f64_sum = sum(&group, 1, Values::F64(vec![rank as f64 + 0.25; 3])).unwrap();
            let absent = sum(&group, 2, Values::Absent).unwrap();
            group.barrier().unwrap();
            (f32_sum, f64_sum, absent)
        });
        let expected: Vec<f32> = (0..40_000)
            .map(|i| {
                let x = (i as f32).sin();
                // Rank 0's value, then rank 1's, then rank 2's: the coordinator's order.
                x * 1.0 + x * 2.0 + x * 3.0
            })
            .collect();
        for (f32_sum, f64_sum, absent) in &sums {
            assert_eq!(f32_sum, &Values::F32(expected.clone()));
            assert_eq!(f64_sum, &Values::F64(vec![3.75; 3]));
            assert_eq!(absent, &Values::Absent);
        }
    }

    #[test]
    fn a_node_out_of_step_stops_every_node_with_the_reason() {
        let _serial = one_group_at_a_time();
        let results = on_nodes(3, |rank, group| {
            // Node 2 holds a gradient where the others hold none (another route).
            let values = if rank == 2 {
                Values::F32(vec![1.0; 4])
            } else {
                Values::Absent
            };
            let first = sum(&group, 0, values).map(drop);
            let after = sum(&group, 1, Values::Absent).map(drop);
            (first, after)
        });
        for (rank, (first, after)) in results.iter().enumerate() {
            let message = first.as_ref().unwrap_err().to_string();
            assert!(
                message.contains("node 2 sent 4 f32 values"),
                "node {rank}: {message}"
            );
            let later = after.as_ref().unwrap_err().to_string();
            assert!(later.contains("stopped earlier"), "node {rank}: {later}");
        }
    }

    #[test]
    fn a_departed_node_is_seen_at_once_and_a_missing_one_after_the_timeout() {
        let _serial = one_group_at_a_time();
        let results = on_nodes(2, |rank, group| {
            if rank == 1 {
                drop(group);
                return None;
            }
            let started = Instant::now();
            let error = sum(&group, 0, Values::F32(vec![1.0]))
                .unwrap_err()
                .to_string();
            Some((error, started.elapsed()))
        });
        let (error, waited) = results[0].clone().unwrap();
        assert!(
            error.contains("node 1 closed its connection at step 5"),
            "{error}"
        );
        assert!(waited < Duration::from_secs(5), "{waited:?}");

        let config = configs(3, Duration::from_millis(300)).remove(0);
        let started = Instant::now();
        let error = NodeGroup::join(&config, 0, &RunFingerprint::default()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("node(s) 1, 2 did not join within 0.3 s"),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn configurations_are_checked() {
        let mut config = configs(2, Duration::from_secs(1)).remove(1);
        config.rank = 2;
        assert!(config.validate().is_err());
        config.rank = 1;
        config.timeout = Duration::ZERO;
        assert!(config.validate().is_err());
        config.nodes = 0;
        assert!(config.validate().is_err());
    }
}
